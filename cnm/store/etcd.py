"""The cluster store: etcd v3 through the PyPI ``etcd3`` client (gRPC).

- Keys live under ``prefix`` (default ``/pycnm/``), values are the shared JSON encoding, a
  key's revision is etcd's mod_revision, a Txn is one etcd transaction (expected revision 0
  compares the key's version with 0, i.e. absent).
- Every call has a deadline (``timeout``, per endpoint tried: a refused connection fails
  at once, a silent host takes the whole timeout). Endpoints are tried in order when one
  cannot be reached (starting at one picked at random per store, so that hosts spread
  over the members) and the first that answers is kept; when none answers the call raises
  StoreUnavailable naming the URLs. A write is retried on the next endpoint only when the
  connection was refused, never after a deadline (it may have been applied).
- Watches run one thread each on a raw gRPC watch stream (not the client's shared watcher
  thread, which spins while etcd is down). A broken stream is re-created with back-off and
  resumes at the revision after the last one seen (events, and etcd's progress
  notifications for quiet prefixes), so an etcd restart loses nothing; if etcd compacted
  that history away the watch catches up from a listing (``WatchCursor.resync``).
- Leases are etcd leases (TTL rounded up to whole seconds; etcd may grant a longer one).
- Security as clusters run it: TLS with the cluster's CA and a client certificate, and
  etcd's user/password authentication (a token per connection, renewed when it expires;
  over plain HTTP too). A refusal (unknown CA, a client certificate etcd does not trust,
  a wrong password, a role without access) is one sentence saying which
  (``etcd_errors``), raised by the first call, before the caller changed anything.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import random
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

# gRPC's C core logs handshake failures to stderr by itself; pycnm reports them as one
# sentence instead (a user's own GRPC_VERBOSITY wins).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

with warnings.catch_warnings():  # etcd3's generated protobuf code trips protobuf 3.20's
    warnings.simplefilter("ignore", DeprecationWarning)  # deprecations: not ours to fix
    import etcd3
    import etcd3.etcdrpc as etcdrpc
    import etcd3.etcdrpc.kv_pb2 as kv_pb2
    import etcd3.exceptions

from cnm.errors import InvalidOption, StoreRefused, StoreUnavailable  # noqa: E402
from cnm.store.base import (  # noqa: E402
    Entry,
    Store,
    Txn,
    WatchCursor,
    WatchEvent,
    decode_value,
    encode_value,
    prefix_end,
)
from cnm.store.etcd_errors import Presented, auth_problem, tls_problem  # noqa: E402
from cnm.store.lease import Lease, LeaseExpired, LeaseStore, lease_id  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/pycnm/"
HINT = "(pass --store or set PYCNM_STORE)"
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

_GRPC_OPTIONS = [
    ("grpc.enable_http_proxy", 0),  # etcd is reached directly, never through a proxy
    # Reconnect soon after etcd comes back (gRPC's default back-off grows to 2 minutes).
    # Not grpc.min_reconnect_backoff_ms: gRPC uses it as the connect timeout, and 100 ms
    # would fail every TLS handshake over a slow link.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a dead peer under an idle watch (etcd accepts pings every 5 s or slower).
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
]
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"h1:2379,h2"`` or ``["http://h1:2379", "[::1]:2379"]`` -> [(host, port)], IPv6
    hosts kept in brackets (as gRPC wants them)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result = []
    for item in items:
        text = item.strip()
        for scheme in ("http://", "https://"):
            text = text.removeprefix(scheme)
        text = text.rstrip("/")
        if text.startswith("["):
            host, _, rest = text.partition("]")
            host += "]"
            port_text = rest.removeprefix(":") if rest.startswith(":") else rest
        elif text.count(":") > 1:
            host, port_text = f"[{text}]", ""
        else:
            host, _, port_text = text.partition(":")
        if not host or host == "[]" or "/" in host or "@" in host:
            raise InvalidOption(f"bad etcd endpoint {item!r}: expected host:port")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise InvalidOption(f"bad etcd endpoint {item!r}: the port must be 1-65535")
        result.append((host, port))
    if not result:
        raise InvalidOption("no etcd endpoint given: expected host:port[,host:port...]")
    return result


def check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """Refuse TLS files that cannot work, before any connection: unreadable, not PEM, or a
    key that does not belong to the certificate (gRPC would only say the handshake
    failed)."""
    for what, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not os.access(path, os.R_OK):
            raise InvalidOption(f"cannot read {path} ({what}=, a TLS file for etcd)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError):
            raise InvalidOption(f"ca={ca} holds no PEM certificate") from None
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            reason = "the key does not belong to the certificate" \
                if "KEY_VALUES_MISMATCH" in str(exc) else "not a PEM certificate and its key"
            raise InvalidOption(f"cert={cert} and key={key}: {reason}") from None


class EtcdStore(Store, LeaseStore):
    """A store in etcd, shared by every host pointing at the same cluster and prefix."""

    cluster = True

    def __init__(self, endpoints: str | Sequence[str], prefix: str = DEFAULT_PREFIX,
                 ca_cert: str | None = None, cert_key: str | None = None,
                 cert_cert: str | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 2.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        if (cert_key is None) != (cert_cert is None):
            raise InvalidOption("a client certificate needs both cert and key")
        if cert_key is not None and ca_cert is None:
            raise InvalidOption("a client certificate needs the CA (ca=FILE) as well")
        check_tls_files(ca_cert, cert_cert, cert_key)
        if (user is None) != (password is None):
            raise InvalidOption("etcd authentication needs both user and password")
        if not timeout > 0:
            raise InvalidOption(f"the etcd timeout must be positive, not {timeout}")
        self._tls = dict(ca_cert=ca_cert, cert_key=cert_key, cert_cert=cert_cert)
        self._auth = dict(user=user, password=password)
        self._presented = Presented(ca=ca_cert, cert=cert_cert, user=user)
        self.user = user
        self.timeout = float(timeout)
        scheme = "https" if ca_cert else "http"
        self.client_urls = [f"{scheme}://{host}:{port}" for host, port in self.endpoints]
        hosts = ",".join(f"{host}:{port}" for host, port in self.endpoints)
        # The URL names the store in messages and logs and reopens it: all but the password.
        params = {"prefix": prefix, "ca": ca_cert, "cert": cert_cert, "key": cert_key,
                  "user": user, "timeout": None if timeout == 2.0 else f"{timeout:g}"}
        self.url = f"{'etcds' if ca_cert else 'etcd'}://{hosts}?" + "&".join(
            f"{name}={value}" for name, value in params.items() if value is not None)
        self._lock = threading.Lock()
        self._clients: dict[int, etcd3.Etcd3Client] = {}
        # Each process starts on a member picked at random, so that a thousand hosts do
        # not all load the first one the URL names (etcd's own clients balance too).
        self._current = random.randrange(len(self.endpoints))
        self._closed = False
        self._watches: set[_Watch] = set()

    # --- the Store interface -------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        response = self._call(lambda c: c.get_response(self.prefix + key))
        return self._entries(response.kvs)[0] if response.kvs else None

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self._entries(self._range(prefix).kvs)

    def put(self, key: str, value: Mapping[str, Any]) -> int:
        text = encode_value(value)
        return self._call(lambda c: c.put(self.prefix + key, text), write=True).header.revision

    def delete(self, key: str) -> bool:
        response = self._call(lambda c: c.delete(self.prefix + key, return_response=True),
                              write=True)
        return response.deleted > 0

    def commit(self, txn: Txn) -> bool:
        deletes = list(dict.fromkeys(txn.deletes))
        puts = {k: encode_value(v) for k, v in txn.puts.items() if k not in deletes}

        def apply(c: etcd3.Etcd3Client) -> bool:
            ops = c.transactions
            compare = [ops.version(self.prefix + k) == 0 if rev == 0
                       else ops.mod(self.prefix + k) == rev for k, rev in txn.compares.items()]
            success = [ops.put(self.prefix + k, v) for k, v in puts.items()]
            success += [ops.delete(self.prefix + k) for k in deletes]
            return c.transaction(compare=compare, success=success, failure=[])[0]

        return bool(self._call(apply, write=True))

    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        listing = self._range(prefix, keys_only=True)
        cut = len(self.prefix)
        cursor = WatchCursor(prefix, callback, listing.header.revision,
                             [kv.key.decode()[cut:] for kv in listing.kvs])
        watch = _Watch(self, cursor)
        with self._lock:
            self._watches.add(watch)
        watch.start()

        def cancel() -> None:
            watch.cancel()
            with self._lock:
                self._watches.discard(watch)

        return cancel

    def close(self) -> None:
        """Cancel the watches and close the connections; idempotent."""
        with self._lock:
            self._closed = True
            watches, self._watches = self._watches, set()
            clients, self._clients = self._clients, {}
        for watch in watches:
            watch.cancel()
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()

    # --- leases ----------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> Lease:
        granted = self._call(lambda c: c.lease(max(1, math.ceil(ttl))))
        return Lease(self, granted.id, float(granted.ttl))

    def refresh_lease(self, lease: Lease | int) -> bool:
        ident = lease_id(lease)
        responses = self._call(lambda c: list(c.refresh_lease(ident)))
        return bool(responses) and responses[0].TTL > 0

    def revoke_lease(self, lease: Lease | int) -> None:
        ident = lease_id(lease)

        def revoke(c: etcd3.Etcd3Client) -> None:
            try:
                c.revoke_lease(ident)
            except grpc.RpcError as exc:
                if _status(exc)[0] != grpc.StatusCode.NOT_FOUND:  # gone already is fine
                    raise

        self._call(revoke, write=True)

    def _put_leased(self, key: str, value: Mapping[str, Any], lease_id: int) -> int:
        text = encode_value(value)

        def put(c: etcd3.Etcd3Client) -> int:
            try:
                return c.put(self.prefix + key, text, lease=lease_id).header.revision
            except grpc.RpcError as exc:
                if _status(exc)[0] == grpc.StatusCode.NOT_FOUND:
                    raise LeaseExpired(f"lease {lease_id} is gone") from exc
                raise

        return self._call(put, write=True)

    # --- calls -----------------------------------------------------------------------------

    def _range(self, prefix: str, keys_only: bool = False) -> Any:
        start = self.prefix + prefix
        end = prefix_end(start) or "\0"  # "\0": every key from start on
        return self._call(lambda c: c.get_range_response(
            start, end, sort_order="ascend", sort_target="key", keys_only=keys_only))

    def _entries(self, kvs: Any) -> builtins.list[Entry]:
        cut = len(self.prefix)
        return [Entry(kv.key.decode()[cut:], decode_value(kv.key.decode(), kv.value),
                      kv.mod_revision) for kv in kvs]

    def _client(self, index: int) -> etcd3.Etcd3Client:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the store {self.url} was closed")
            client = self._clients.get(index)
        if client is None:
            host, port = self.endpoints[index]
            client = etcd3.Etcd3Client(host, port, timeout=self.timeout,
                                       grpc_options=_GRPC_OPTIONS, **self._tls, **self._auth)
            if not client.uses_secure_channel:
                # gRPC sends call credentials over TLS only: over plain HTTP the auth token
                # travels as the metadata the client sends with every call anyway.
                client.call_credentials = None
                client.watcher.call_credentials = None
            with self._lock:
                client = self._clients.setdefault(index, client)
        return client

    def _drop_client(self, index: int) -> None:
        with self._lock:
            client = self._clients.pop(index, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _endpoint_failed(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.endpoints)

    def _call(self, operation: Callable[[etcd3.Etcd3Client], T], write: bool = False) -> T:
        """Run ``operation`` on the first endpoint that answers; errors become one-sentence
        StoreUnavailable messages."""
        start = self._current
        count = len(self.endpoints)
        refusal: str | None = None  # a TLS refusal seen on the way: it explains the failure
        for step in range(count):
            index = (start + step) % count
            for attempt in range(2):  # a second try only with a fresh auth token
                try:
                    result = operation(self._client(index))
                except (grpc.RpcError, etcd3.exceptions.Etcd3Exception) as exc:
                    code, details = _status(exc)
                    if code == grpc.StatusCode.UNAUTHENTICATED and attempt == 0 \
                            and "token" in details:
                        self._drop_client(index)  # the token expired: log in again
                        continue
                    if code not in _UNREACHABLE:
                        raise self._failure(index, code, details) from exc
                    self._endpoint_failed(index)
                    if refusal is None:
                        refusal = tls_problem(self.client_urls[index], details,
                                              self._presented)
                    if refusal is not None:
                        self._drop_client(index)  # a new handshake next time, new files
                    if write and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise StoreUnavailable(
                            f"etcd at {self.client_urls[index]} did not answer within "
                            f"{self.timeout:g} s; the change may or may not have been applied "
                            "(check, then retry)") from exc
                    break
                except ValueError as exc:  # gRPC refuses calls on a closed channel
                    raise StoreUnavailable(f"the store {self.url} was closed") from exc
                with self._lock:
                    self._current = index
                return result
        if refusal:
            raise StoreRefused(f"{refusal} {HINT}")
        raise StoreUnavailable(self._unreachable())

    def _unreachable(self) -> str:
        what = "is etcd running?"
        if self._tls["ca_cert"]:
            what = "is etcd running, with TLS that this CA and client certificate match?"
        return f"cannot reach etcd at {' or '.join(self.client_urls)}: {what} {HINT}"

    def _failure(self, index: int, code: grpc.StatusCode | None, details: str) -> Exception:
        url = self.client_urls[index]
        refusal = auth_problem(url, code, details, self._presented, self.prefix)
        if refusal is not None:
            return StoreRefused(refusal)
        return StoreUnavailable(f"etcd at {url} failed: {details or code}")


class _Watch:
    """One prefix watch on its own thread and gRPC stream; see the module docstring."""

    def __init__(self, store: EtcdStore, cursor: WatchCursor) -> None:
        self.store = store
        self.cursor = cursor
        self.key = (store.prefix + cursor.prefix).encode()
        self.range_end = (prefix_end(store.prefix + cursor.prefix) or "\0").encode()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None  # the gRPC call, to cancel it
        self._reported = False  # a loss was logged; log the recovery too
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"pycnm-etcd-watch:{cursor.prefix}")

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()
        self.cursor.close()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                if self._follow():
                    delay = BACKOFF_FIRST
            except _Compacted as exc:
                with contextlib.suppress(StoreUnavailable):
                    self._catch_up(exc.revision)
                    continue
            except (StoreUnavailable, grpc.RpcError) as exc:
                if self._stop.is_set():
                    return
                if not self._reported:
                    log.warning("etcd watch on %s%s lost (%s); reconnecting from revision %d",
                                self.store.prefix, self.cursor.prefix, _status(exc)[1] or exc,
                                self.cursor.revision + 1)
                    self._reported = True
            except Exception:  # noqa: BLE001 - keep watching; say what went wrong
                log.exception("etcd watch on %s%s failed", self.store.prefix,
                              self.cursor.prefix)
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _follow(self) -> bool:
        """Stream events from the revision after the last delivered one until the stream
        breaks; True if it had been established."""
        index = self.store._current
        client = self.store._client(index)
        create = etcdrpc.WatchCreateRequest(key=self.key, range_end=self.range_end,
                                            start_revision=self.cursor.revision + 1,
                                            progress_notify=True)
        ended = threading.Event()
        # hasleader: a member cut off from the cluster's leader ends the stream (etcd's
        # WithRequireLeader) instead of going quiet, so the watch moves to another member.
        metadata = (*(client.metadata or ()), ("hasleader", "true"))
        stream = etcdrpc.WatchStub(client.channel).Watch(
            _requests(etcdrpc.WatchRequest(create_request=create), ended),
            credentials=client.call_credentials, metadata=metadata)
        with self._lock:
            self._stream = stream
        established = False
        try:
            if self._stop.is_set():
                return False
            for response in stream:
                if response.compact_revision:
                    raise _Compacted(response.header.revision)
                if response.canceled:
                    raise StoreUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.created:
                    established = True
                    if self._reported:
                        log.info("etcd watch on %s%s re-established at revision %d",
                                 self.store.prefix, self.cursor.prefix, self.cursor.revision)
                        self._reported = False
                if response.events:
                    self.cursor.deliver(self._events(response.events))
                elif not response.created:  # progress: etcd has sent everything up to here
                    self.cursor.deliver([], upto=response.header.revision)
            return established
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return established
            code, details = _status(exc)
            if code in _UNREACHABLE:
                self.store._endpoint_failed(index)
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                self.store._drop_client(index)  # its auth token expired: log in again
            raise
        finally:
            ended.set()
            with self._lock:
                self._stream = None

    def _catch_up(self, revision: int) -> None:
        log.warning("etcd watch on %s%s: history before revision %d was compacted",
                    self.store.prefix, self.cursor.prefix, revision)
        response = self.store._range(self.cursor.prefix)
        self.cursor.resync(self.store._entries(response.kvs), response.header.revision)

    def _events(self, raw: Any) -> list[WatchEvent]:
        events = []
        for event in raw:
            full = event.kv.key.decode()
            key = full[len(self.store.prefix):]
            if event.type == kv_pb2.Event.DELETE:
                events.append(WatchEvent("delete", key, None, event.kv.mod_revision))
                continue
            try:
                value = decode_value(full, event.kv.value)
            except StoreUnavailable as exc:  # a foreign writer: skip it, keep watching
                log.error("etcd watch: %s", exc)
                continue
            events.append(WatchEvent("put", key, value, event.kv.mod_revision))
        return events


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted at {revision}")
        self.revision = revision


def _requests(first: Any, ended: threading.Event) -> Iterator[Any]:
    """The watch stream's request side: one create, then held open until the stream ends
    (closing it would end the watch; gRPC reads it from a thread of its own)."""
    yield first
    ended.wait()


def _status(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """The gRPC status behind an error, also through etcd3's translated exceptions."""
    if isinstance(exc, etcd3.exceptions.ConnectionFailedError):
        return grpc.StatusCode.UNAVAILABLE, _details(exc.__context__) or "connection failed"
    if isinstance(exc, etcd3.exceptions.ConnectionTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code(), _details(exc)
    return None, str(exc)


def _details(exc: BaseException | None) -> str:
    details = getattr(exc, "details", None)
    return (details() or "") if callable(details) else ""
