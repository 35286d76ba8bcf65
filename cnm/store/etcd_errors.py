"""One sentence for each way etcd can refuse pycnm: TLS handshakes that fail (unknown CA,
a client certificate etcd does not trust or that is missing, TLS against plain HTTP),
and authentication (wrong password, no user where etcd requires one, a role without
access to pycnm's prefix).

gRPC reports a failed handshake as UNAVAILABLE, like a stopped server, with the reason
only in the details text (checked against etcd 3.4 and grpcio 1.85); etcd reports a
wrong password as INVALID_ARGUMENT. These helpers read both.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

ENV_HINT = "in the store URL (or PYCNM_ETCD_{0})"


@dataclass(frozen=True)
class Presented:
    """What this client shows etcd: the CA it trusts, its certificate, its user."""

    ca: str | None
    cert: str | None
    user: str | None


def tls_problem(url: str, details: str, presented: Presented) -> str | None:
    """The sentence for a failed TLS handshake with etcd at ``url``, or None when
    ``details`` shows no TLS problem (etcd is simply not there)."""
    if presented.ca is None:
        if details.endswith("Socket closed"):
            return (f"etcd at {url} closed the connection at once: if it serves TLS, use "
                    f"etcds://HOST:PORT?ca=FILE (and cert=FILE&key=FILE)")
        return None
    if "CERTIFICATE_VERIFY_FAILED" in details or "not in peer certificate" in details:
        return (f"etcd at {url} presented a certificate that the CA in {presented.ca} does "
                f"not vouch for ({_reason(details)}): ca= must name the CA that signed "
                f"etcd's certificate, for the address in the URL")
    if any(mark in details for mark in ("Unwrap failed", "TSI_DATA_CORRUPTED",
                                        "BAD_CERTIFICATE", "UNKNOWN_CA",
                                        "CERTIFICATE_REQUIRED")):
        if presented.cert is None:
            return (f"etcd at {url} requires a client certificate: give cert=FILE&key=FILE "
                    f"{ENV_HINT.format('CERT and PYCNM_ETCD_KEY')}")
        return (f"etcd at {url} refused the client certificate {presented.cert}: it must be "
                f"signed by a CA etcd trusts (its --trusted-ca-file)")
    if "andshake" in details:  # "Handshake read failed", "Tls handshake failed"
        return (f"the TLS handshake with etcd at {url} failed ({_reason(details)}): does it "
                f"serve TLS on that port? (etcd:// is for plain HTTP)")
    return None


def auth_problem(url: str, code: grpc.StatusCode | None, details: str,
                 presented: Presented, prefix: str) -> str | None:
    """The sentence for an authentication or permission refusal, or None."""
    who = (f"user {presented.user!r}" if presented.user
           else "the user named by the client certificate" if presented.cert
           else "an anonymous client")
    if "authentication failed" in details or "invalid user ID or password" in details:
        return (f"etcd at {url} refused {who}: wrong user name or password (check user= "
                f"and password= {ENV_HINT.format('USER and PYCNM_ETCD_PASSWORD')})")
    if "user name is empty" in details or "user name not found" in details:
        return (f"etcd at {url} requires authentication: give user= and password= "
                f"{ENV_HINT.format('USER and PYCNM_ETCD_PASSWORD')}, or a client "
                f"certificate whose common name is an etcd user")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"etcd at {url} refused {who} ({details}): check user and password"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return (f"etcd at {url} denied {who} access under {prefix} ({details}): grant its "
                f"role read-write on that prefix")
    return None


def _reason(details: str) -> str:
    """The useful end of gRPC's handshake message ("unable to get local issuer
    certificate", "Handshake read failed (Socket closed)")."""
    text = details.removesuffix(": OK").strip()
    for cut in ("CERTIFICATE_VERIFY_FAILED: ", "last error: "):
        if cut in text:
            text = text.rsplit(cut, 1)[1]
    if text.startswith("UNAVAILABLE: ") or text.startswith("UNKNOWN: "):
        text = text.split(": ", 1)[1]
    if text.startswith("ipv4:") or text.startswith("ipv6:"):
        text = text.split(": ", 1)[-1]
    return text
