"""Typed errors with messages a user can act on.

Front ends map every one of these to one line: the CLI prints it and exits non-zero,
the Docker plugin answers HTTP 500 ``{"Err": message}``.
"""

from __future__ import annotations


class CNMError(Exception):
    """Base of every error pycnm raises on purpose; ``str(err)`` is the user message."""

    exit_code = 1


class NotFound(CNMError):
    """An object named by the user does not exist."""


class Conflict(CNMError):
    """The request clashes with something that exists (name, subnet, address, parent)."""


class InvalidOption(CNMError):
    """An option, flag or field has a value pycnm cannot accept."""

    exit_code = 2


class PoolExhausted(CNMError):
    """No address or pool is left to hand out."""


class KernelFeatureMissing(CNMError):
    """The running kernel lacks a feature the request needs (e.g. 802.1q, ipvlan)."""


class StoreUnavailable(CNMError):
    """The state store cannot be reached; nothing was changed."""


class StoreRefused(StoreUnavailable):
    """The store answered and refused this client (TLS or credentials): retrying will not
    help until the configuration changes."""


class KernelError(CNMError):
    """The kernel refused an operation; the message says which and why."""


class Busy(CNMError):
    """The object is still in use (e.g. a network that still has endpoints)."""
