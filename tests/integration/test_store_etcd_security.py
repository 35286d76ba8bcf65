"""The etcd store against etcd as production clusters run it: TLS with client
certificates (a CA, server and client certificates this module makes), user/password
authentication, and every way of getting them wrong refused with one sentence before
anything is made. Real etcd servers on loopback, started by this module."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm.errors import InvalidOption, StoreUnavailable
from cnm.store import open_store
from cnm.store.etcd import EtcdStore
from netns_fixtures.etcd import EtcdServer, EtcdTLS, enable_auth, start_etcd, store_url
from tests.unit.test_store import Recorder

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/pycnm-sec/"
PASSWORD = "s3cret-pw"
TOKEN_TTL = 1  # seconds: etcd's auth tokens expire quickly here, and pycnm must not care


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdTLS:
    return EtcdTLS.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> EtcdTLS:
    """Another CA with its own certificates: nothing of it is trusted by the etcds here."""
    return EtcdTLS.create(tmp_path_factory.mktemp("pki-other"))


@pytest.fixture(scope="module")
def tls_etcd(pki: EtcdTLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """TLS only, client certificates required (--client-cert-auth), no user auth."""
    server = start_etcd(tmp_path_factory.mktemp("etcd-tls"), tls=pki)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def auth_etcd(pki: EtcdTLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """TLS with client certificates and user/password auth: user ``pycnm`` may use
    PREFIX, user ``elsewhere`` only another prefix; auth tokens live TOKEN_TTL s."""
    server = start_etcd(tmp_path_factory.mktemp("etcd-auth"), tls=pki,
                        extra_args=("--auth-token-ttl", str(TOKEN_TTL)))
    try:
        enable_auth(server, {"pycnm": (PASSWORD, PREFIX), "elsewhere": (PASSWORD, "/other/")})
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """Plain HTTP with user/password auth (a lab, or a cluster behind its own network)."""
    server = start_etcd(tmp_path_factory.mktemp("etcd-plain-auth"))
    try:
        enable_auth(server, {"pycnm": (PASSWORD, PREFIX)})
        yield server
    finally:
        server.stop()


@pytest.fixture
def opened() -> Iterator[Callable[[str], Any]]:
    stores: list[Any] = []

    def open_(url: str) -> Any:
        store = open_store(url)
        stores.append(store)
        return store

    try:
        yield open_
    finally:
        for store in stores:
            store.close()


def url_of(server: EtcdServer, tls: EtcdTLS | None = None, **params: str) -> str:
    return store_url([server.endpoint], tls, {"prefix": PREFIX, "timeout": "2", **params})


def refusal(store: Any) -> str:
    """The one sentence a refused store gives, within a second or two."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get("probe")
    assert time.monotonic() - started < 5, "a refusal must not wait for timeouts"
    message = str(info.value)
    assert "\n" not in message
    return message


# --- TLS with client certificates ------------------------------------------------------


def test_tls_with_a_client_certificate_reads_writes_watches_and_leases(
        tls_etcd: EtcdServer, pki: EtcdTLS, opened) -> None:
    writer, watcher = opened(url_of(tls_etcd, pki)), opened(url_of(tls_etcd, pki))
    assert writer.url.startswith("etcds://")
    got = Recorder()
    cancel = watcher.watch("w/", got)
    try:
        writer.put("w/a", {"n": 1})
        assert writer.get("w/a").value == {"n": 1}
        got.wait_for("put", "w/a")
        lease = writer.grant_lease(5.0)
        writer.put_with_lease("w/leased", {"n": 2}, lease)
        got.wait_for("put", "w/leased")
        assert writer.refresh_lease(lease)
        writer.revoke_lease(lease)
        got.wait_for("delete", "w/leased")
    finally:
        cancel()


def test_an_unknown_ca_is_refused_in_one_sentence(tls_etcd: EtcdServer, pki: EtcdTLS,
                                                  stranger: EtcdTLS, opened) -> None:
    url = url_of(tls_etcd, pki, ca=stranger.ca.cert)
    message = refusal(opened(url))
    assert f"etcd at https://{tls_etcd.endpoint} presented a certificate that the CA in " \
           f"{stranger.ca.cert} does not vouch for" in message


def test_a_client_certificate_of_another_ca_is_refused(tls_etcd: EtcdServer, pki: EtcdTLS,
                                                       stranger: EtcdTLS, opened) -> None:
    url = url_of(tls_etcd, pki, cert=stranger.client.cert, key=stranger.client.key)
    message = refusal(opened(url))
    assert f"refused the client certificate {stranger.client.cert}" in message
    assert "signed by a CA etcd trusts" in message


def test_no_client_certificate_where_etcd_requires_one(tls_etcd: EtcdServer, pki: EtcdTLS,
                                                       opened) -> None:
    message = refusal(opened(f"etcds://{tls_etcd.endpoint}?ca={pki.ca.cert}"))
    assert "requires a client certificate: give cert=FILE&key=FILE" in message


def test_plain_http_against_tls_and_tls_against_plain_http(
        tls_etcd: EtcdServer, etcd_server: EtcdServer, pki: EtcdTLS, opened) -> None:
    message = refusal(opened(f"etcd://{tls_etcd.endpoint}"))
    assert "if it serves TLS, use etcds://" in message
    message = refusal(opened(url_of(etcd_server, pki)))
    assert f"the TLS handshake with etcd at https://{etcd_server.endpoint} failed" in message


def test_tls_files_that_cannot_work_are_refused_when_the_store_is_opened(
        pki: EtcdTLS, stranger: EtcdTLS, tmp_path: Path) -> None:
    base = "etcds://127.0.0.1:2379"
    cases = {
        f"{base}?ca={tmp_path}/missing.pem": f"cannot read {tmp_path}/missing.pem",
        f"{base}?ca={pki.client.key}": f"ca={pki.client.key} holds no PEM certificate",
        f"{base}?ca={pki.ca.cert}&cert={pki.client.cert}&key={stranger.client.key}":
            "the key does not belong to the certificate",
        f"{base}?ca={pki.ca.cert}&cert={pki.client.cert}": "needs both cert and key",
        f"{base}": "etcds:// needs the CA",
    }
    for url, expected in cases.items():
        with pytest.raises(InvalidOption) as info:
            open_store(url)
        assert expected in str(info.value), url


# --- user/password authentication ----------------------------------------------------------


def test_the_right_password_works_and_survives_expiring_tokens(
        auth_etcd: EtcdServer, pki: EtcdTLS, opened) -> None:
    """Tokens expire every TOKEN_TTL s: calls, a watch and a lease carry on regardless."""
    writer = opened(url_of(auth_etcd, pki, user="pycnm", password=PASSWORD))
    watcher = opened(url_of(auth_etcd, pki, user="pycnm", password=PASSWORD))
    got = Recorder()
    cancel = watcher.watch("t/", got)
    try:
        lease = writer.grant_lease(3.0)
        ends = time.monotonic() + 4 * TOKEN_TTL
        count = 0
        while time.monotonic() < ends and count < 400:  # bounded: both in time and count
            writer.put(f"t/{count}", {"n": count})
            assert writer.refresh_lease(lease), "the lease was lost"
            count += 1
            time.sleep(0.05)
        for n in (0, count - 1):
            got.wait_for("put", f"t/{n}")
        assert writer.get(f"t/{count - 1}").value == {"n": count - 1}
    finally:
        cancel()


def test_a_wrong_password_is_refused_in_one_sentence(auth_etcd: EtcdServer, pki: EtcdTLS,
                                                     opened) -> None:
    message = refusal(opened(url_of(auth_etcd, pki, user="pycnm", password="not-it-42")))
    assert message.startswith(f"etcd at https://{auth_etcd.endpoint} refused user 'pycnm': "
                              "wrong user name or password")
    assert "not-it-42" not in message  # a password is never echoed


def test_a_user_without_access_to_the_prefix_is_told_so(auth_etcd: EtcdServer, pki: EtcdTLS,
                                                        opened) -> None:
    message = refusal(opened(url_of(auth_etcd, pki, user="elsewhere", password=PASSWORD)))
    assert f"denied user 'elsewhere' access under {PREFIX}" in message


def test_the_client_certificate_names_the_user_when_no_password_is_given(
        auth_etcd: EtcdServer, pki: EtcdTLS, opened) -> None:
    """etcd with --client-cert-auth takes the certificate's common name (``pycnm``, which
    may use PREFIX) as the user."""
    store = opened(url_of(auth_etcd, pki))
    store.put("cn", {"ok": True})
    assert store.get("cn").value == {"ok": True}
    outside = opened(store_url([auth_etcd.endpoint], pki, {"prefix": "/other/"}))
    assert "denied the user named by the client certificate access under /other/" in \
        refusal(outside)


def test_user_and_password_over_plain_http(plain_auth_etcd: EtcdServer, opened) -> None:
    store = opened(url_of(plain_auth_etcd, user="pycnm", password=PASSWORD))
    store.put("p", {"n": 1})
    assert store.get("p").value == {"n": 1}
    message = refusal(opened(url_of(plain_auth_etcd)))
    assert "requires authentication: give user= and password=" in message


def test_credentials_from_the_environment(auth_etcd: EtcdServer, pki: EtcdTLS,
                                          monkeypatch: pytest.MonkeyPatch, opened) -> None:
    """PYCNM_ETCD_* fill in what the URL leaves out; the URL wins."""
    monkeypatch.setenv("PYCNM_ETCD_CA", pki.ca.cert)
    monkeypatch.setenv("PYCNM_ETCD_CERT", pki.client.cert)
    monkeypatch.setenv("PYCNM_ETCD_KEY", pki.client.key)
    monkeypatch.setenv("PYCNM_ETCD_USER", "pycnm")
    monkeypatch.setenv("PYCNM_ETCD_PASSWORD", PASSWORD)
    store = opened(f"etcds://{auth_etcd.endpoint}?prefix={PREFIX}")
    assert isinstance(store, EtcdStore) and store.user == "pycnm"
    store.put("env", {"n": 1})
    assert "password" not in store.url  # the URL that names the store in messages
    wrong = opened(f"etcds://{auth_etcd.endpoint}?prefix={PREFIX}&password=nope")
    assert "wrong user name or password" in refusal(wrong)


def test_the_password_from_a_file(auth_etcd: EtcdServer, pki: EtcdTLS, tmp_path: Path,
                                  opened) -> None:
    secret = tmp_path / "password"
    secret.write_text(f"{PASSWORD}\n")
    store = opened(url_of(auth_etcd, pki, user="pycnm", password_file=str(secret)))
    store.put("file", {"n": 1})
    empty = tmp_path / "empty"
    empty.write_text("")
    for path, expected in ((empty, f"password_file {empty} is empty"),
                           (tmp_path / "none", f"cannot read password_file {tmp_path}/none")):
        with pytest.raises(InvalidOption, match=expected):
            open_store(url_of(auth_etcd, pki, user="pycnm", password_file=str(path)))
    with pytest.raises(InvalidOption, match="password or password_file, not both"):
        open_store(url_of(auth_etcd, pki, user="pycnm", password="x",
                          password_file=str(secret)))


# --- the command line: refused before anything is made ---------------------------------------


def pycnm(url: str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnm.cli", "--store", url, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.root
def test_the_cli_and_the_plugin_refuse_bad_credentials_before_making_anything(
        auth_etcd: EtcdServer, pki: EtcdTLS, stranger: EtcdTLS, tmp_path: Path) -> None:
    """Every bad credential: one line on stderr, a non-zero exit, no traceback, and
    neither the stores nor the kernel got anything. An overlay network needs the cluster
    (its pool comes from the cluster-wide IPAM); the plugin checks the cluster at start."""
    tag = os.urandom(3).hex()
    local = f"sqlite:///{tmp_path}/local.db"  # this host's own records
    good = url_of(auth_etcd, pki, user="pycnm", password=PASSWORD)
    bad_urls = {
        "wrong password": url_of(auth_etcd, pki, user="pycnm", password="wrong"),
        "unknown CA": url_of(auth_etcd, pki, user="pycnm", password=PASSWORD,
                             ca=stranger.ca.cert),
        "untrusted client certificate": url_of(auth_etcd, pki, user="pycnm",
                                               password=PASSWORD, cert=stranger.client.cert,
                                               key=stranger.client.key),
    }
    namespaces = set(os.listdir("/run/netns"))
    for what, url in bad_urls.items():
        result = pycnm(url, "--local-store", local, "--host-id", f"sec{tag}", "network",
                       "create", "-d", "overlay", "--subnet", "10.97.0.0/24", "-o",
                       f"overlay=sec{tag}", f"sec{tag}")
        assert result.returncode != 0, what
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: etcd"), (what, result.stderr)
        assert "Traceback" not in result.stderr
        socket_path = tmp_path / f"plugin-{what.replace(' ', '-')}.sock"
        served = pycnm(url, "--local-store", local, "--host-id", f"sec{tag}", "plugin",
                       "serve", "--socket", str(socket_path), timeout=60)
        assert served.returncode != 0, what
        assert len(served.stderr.strip().splitlines()) == 1, (what, served.stderr)
        assert not socket_path.exists(), what
    assert not {n for n in os.listdir("/run/netns") if tag in n} - namespaces
    listed = pycnm(good, "--local-store", local, "--host-id", f"sec{tag}", "--json",
                   "network", "ls")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    with contextlib.closing(open_store(good)) as store:  # the failed runs wrote nothing
        assert not [e.key for e in store.list("") if tag in e.key]
    # Through the environment, as a systemd EnvironmentFile or a managed plugin gives it.
    env = {"PYCNM_ETCD_USER": "pycnm", "PYCNM_ETCD_PASSWORD": PASSWORD,
           "PYCNM_LOCAL_STORE": local}
    checked = pycnm(url_of(auth_etcd, pki), "--host-id", f"sec{tag}", "reconcile", env=env)
    assert checked.returncode == 0, checked.stderr
    wrong = pycnm(url_of(auth_etcd, pki), "--host-id", f"sec{tag}", "reconcile",
                  env={**env, "PYCNM_ETCD_PASSWORD": "wrong"})
    assert wrong.returncode != 0 and "wrong user name or password" in wrong.stderr
