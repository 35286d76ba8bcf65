"""Store URLs: how a user names a store (``--store``, ``PYCNM_STORE``, ``Controller(store=)``).

    sqlite:///var/lib/pycnm/state.db    absolute path (the default)
    sqlite://state/pycnm.db             relative to the working directory
    /tmp/pycnm.db, ./pycnm.db           a bare path: SQLite
    memory://                           in-process, gone at exit (tests)
    etcd://h1:2379,h2:2379?prefix=/pycnm/&user=U&password=P&timeout=2
    etcds://h1:2379?ca=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem     etcd over TLS

An etcd URL names several members with commas; pycnm fails over among them. What the URL
leaves out comes from the environment, so that secrets need not sit in a command line
(where every local user can read them) or in a unit file:

    PYCNM_ETCD_USER, PYCNM_ETCD_PASSWORD      etcd's user/password authentication
    PYCNM_ETCD_PASSWORD_FILE                  or a file holding the password (password_file=)
    PYCNM_ETCD_CA, PYCNM_ETCD_CERT, PYCNM_ETCD_KEY    TLS files (etcds:// URLs only)

A parameter in the URL wins over its variable.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from cnm.errors import InvalidOption
from cnm.store.base import Store

ENV_STORE = "PYCNM_STORE"
ENV_LOCAL_STORE = "PYCNM_LOCAL_STORE"  # a host's own records beside a cluster store
DEFAULT_URL = "sqlite:///var/lib/pycnm/state.db"
FORMS = ("sqlite:///ABS/PATH.db, sqlite://REL/PATH.db or a plain file path; memory://; "
         "etcd://HOST:PORT[,HOST:PORT...][?prefix=/pycnm/&user=U&password=P"
         "|password_file=F&timeout=2]; "
         "etcds://HOST:PORT[,...]?ca=FILE[&cert=FILE&key=FILE] for etcd over TLS")
_ETCD_PARAMS = ("prefix", "ca", "cert", "key", "user", "password", "password_file",
                "timeout")
ENV_ETCD = {"ca": "PYCNM_ETCD_CA", "cert": "PYCNM_ETCD_CERT", "key": "PYCNM_ETCD_KEY",
            "user": "PYCNM_ETCD_USER", "password": "PYCNM_ETCD_PASSWORD",
            "password_file": "PYCNM_ETCD_PASSWORD_FILE"}
_TLS_PARAMS = ("ca", "cert", "key")


def open_store(url: str | None = None) -> Store:
    """Open the store ``url`` names; None means ``$PYCNM_STORE``, else the SQLite default.
    Raises InvalidOption (showing the accepted forms) for a URL it cannot read."""
    if url is None:
        url = os.environ.get(ENV_STORE) or DEFAULT_URL
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        if not text or re.match(r"(?i)(sqlite|memory|etcds?):", text):
            raise _bad(url, "it has no scheme:// and is not a file path")
        from cnm.store.sqlite import SQLiteStore

        return SQLiteStore(text)
    if scheme == "sqlite":
        if not rest or rest == "/":
            raise _bad(url, "the SQLite URL names no file")
        from cnm.store.sqlite import SQLiteStore

        return SQLiteStore(rest)  # sqlite:///abs -> "/abs", sqlite://rel -> "rel"
    if scheme == "memory":
        if rest:
            raise _bad(url, "memory:// takes nothing after it")
        from cnm.store.memory import MemoryStore

        return MemoryStore()
    if scheme in ("etcd", "etcds"):
        return _open_etcd(url, scheme == "etcds")
    raise _bad(url, f"unknown scheme {scheme}://")


def _open_etcd(url: str, tls: bool) -> Store:
    from cnm.store.etcd import EtcdStore

    parts = urllib.parse.urlsplit(url.strip())
    if "@" in parts.netloc:
        raise _bad(url, "give etcd credentials as ?user=U&password=P")
    if not parts.netloc:
        raise _bad(url, "no etcd host:port")
    if parts.path not in ("", "/") or parts.fragment:
        raise _bad(url, f"unexpected {parts.path or '#' + parts.fragment!r} after the hosts")
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                       strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise _bad(url, f"cannot read the query ({exc})") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _ETCD_PARAMS:
            raise _bad(url, f"unknown parameter {name!r} (known: {', '.join(_ETCD_PARAMS)})")
        if name in params:
            raise _bad(url, f"parameter {name!r} given twice")
        params[name] = value
    if "password" in params and "password_file" in params:
        raise _bad(url, "give password or password_file, not both")
    for name, variable in ENV_ETCD.items():
        if name not in params and os.environ.get(variable) and (tls or name not in _TLS_PARAMS):
            params[name] = os.environ[variable]
    if "password_file" in params:
        if "password" not in params:
            params["password"] = _read_password(url, params["password_file"])
        del params["password_file"]
    if tls and "ca" not in params:
        raise _bad(url, "etcds:// needs the CA that signed etcd's certificate: ?ca=FILE "
                   "(or PYCNM_ETCD_CA)")
    if not tls and params.keys() & {"ca", "cert", "key"}:
        raise _bad(url, "TLS files need etcds://")
    try:
        timeout = float(params.get("timeout", "2"))
    except ValueError:
        raise _bad(url, f"timeout must be a number of seconds, not {params['timeout']!r}") \
            from None
    try:
        return EtcdStore(parts.netloc, prefix=params.get("prefix", "/pycnm/"),
                         ca_cert=params.get("ca"), cert_key=params.get("key"),
                         cert_cert=params.get("cert"), user=params.get("user"),
                         password=params.get("password"), timeout=timeout)
    except InvalidOption as exc:
        raise _bad(url, str(exc)) from None


def _read_password(url: str, path: str) -> str:
    """The password in ``path``: its first line, without the line end."""
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(url, f"cannot read password_file {path} "
                   f"({getattr(exc, 'strerror', None) or exc})") from None
    if not password:
        raise _bad(url, f"password_file {path} is empty")
    return password


def _bad(url: str, reason: str) -> InvalidOption:
    shown = re.sub(r"(?i)(password=)[^&]*", r"\1***", url)  # never echo a password
    return InvalidOption(f"cannot use store URL {shown!r}: {reason}; accepted forms: {FORMS}")
