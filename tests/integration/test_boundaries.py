"""Input that would reach past its purpose, from each front end, and the one sentence that
stops it: a lab name that is a path, a TCP listener off loopback, options only pycnm may
set, a SandboxKey that is not a network namespace, endpoint ids whose kernel names clash,
and the errors that used to be a generic "internal error" or a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm.controller import Controller
from cnm.errors import Conflict
from netns_fixtures.netns import Namespace
from plugin_server.app import create_app
from tests.integration.bridge_helpers import ping_eventually, unique

pytestmark = pytest.mark.root


def pycnm(*args: str, env: dict[str, str] | None = None, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode not in (0, None), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- 1. lab down NAME: a name, never a path -------------------------------------------------


@pytest.fixture
def labs(tmp_path: Path) -> dict[str, Any]:
    """A labs dir of its own, a folder beside it, and files in both that must survive."""
    labs_dir = tmp_path / "labs"
    labs_dir.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("not a lab's\n")
    (tmp_path / "beside").write_text("next to the labs dir\n")
    return {"dir": labs_dir, "victim": victim, "root": tmp_path,
            "env": {"PYCNM_LAB_DIR": str(labs_dir)}}


@pytest.mark.parametrize("name", ["VICTIM", "..", "../victim", ".", "x/..", "lab\n",
                                  "UPPER", "a" * 13])
def test_lab_down_refuses_a_name_that_is_not_a_lab_name(labs: dict[str, Any],
                                                        name: str) -> None:
    target = str(labs["victim"]) if name == "VICTIM" else name
    one_error_line(pycnm("lab", "down", target, env=labs["env"]), "lab name")
    assert (labs["victim"] / "keep").read_text() == "not a lab's\n"
    assert (labs["root"] / "beside").exists() and labs["dir"].is_dir()


def test_lab_down_of_a_lab_name_still_removes_its_folder(labs: dict[str, Any]) -> None:
    folder = labs["dir"] / "gone1"
    folder.mkdir()
    (folder / "state.json").write_text("{broken")
    result = pycnm("lab", "down", "gone1", env=labs["env"])
    assert result.returncode == 0, result.stderr
    assert not folder.exists() and labs["dir"].is_dir()
    assert (labs["victim"] / "keep").exists()


def test_a_labs_dir_entry_that_is_a_link_out_is_not_followed(labs: dict[str, Any]) -> None:
    (labs["dir"] / "escape1").symlink_to(labs["victim"], target_is_directory=True)
    one_error_line(pycnm("lab", "down", "escape1", env=labs["env"]), "not inside")
    assert (labs["victim"] / "keep").exists()


# --- 3. plugin serve: TCP on loopback only, listeners it can make ---------------------------


def serve(host: Namespace, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``pycnm plugin serve`` that must refuse to start: it gets 30 s to say so (a server
    that starts instead is stopped and fails the test)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnm.cli", "--store", store_url, "--host-ns", host.path,
         "plugin", "serve", "--no-background", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"plugin serve {' '.join(args)} started instead of refusing: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("tcp", "words"), [
    ("0.0.0.0:{port}", "loopback"), ("[::]:{port}", "loopback"),
    ("198.18.9.1:{port}", "loopback"), ("localhost:{port}", "loopback"),
    ("127.0.0.1:70000", "between 1 and 65535"), ("127.0.0.1:0", "between 1 and 65535"),
    ("127.0.0.1", "HOST:PORT"),
])
def test_plugin_serve_listens_on_tcp_only_on_loopback(netns: Callable[..., Namespace],
                                                     store_url: str, tmp_path: Path,
                                                     tcp: str, words: str) -> None:
    sock = tmp_path / "p.sock"
    result = serve(netns("host"), store_url, "--socket", str(sock), "--tcp",
                   tcp.format(port=19234))
    one_error_line(result, "--tcp", words)
    assert result.returncode == 2 and not sock.exists()


def test_plugin_serve_refuses_a_socket_path_too_long_for_the_kernel(
        netns: Callable[..., Namespace], store_url: str, tmp_path: Path) -> None:
    sock = tmp_path / ("d" * 60) / ("s" * 60 + ".sock")
    result = serve(netns("host"), store_url, "--socket", str(sock))
    one_error_line(result, "--socket", "107 bytes")
    assert not sock.parent.exists()


# --- 4. options only pycnm sets; a SandboxKey must be a network namespace ------------------


@pytest.fixture
def plugin(netns: Callable[..., Namespace], store_url: str) -> Iterator[Any]:
    """A plugin app on a Controller of its own, with one network and one endpoint."""
    host = netns("host")
    ctl = Controller(store_url, host_ns=host.path)
    client = create_app(ctl).test_client()

    def call(name: str, body: Any, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        response = client.post(f"/{name}", data=raw if raw is not None else json.dumps(body))
        return response.status_code, json.loads(response.get_data())

    try:
        nid, eid = "a" * 64, "b" * 64
        assert call("NetworkDriver.CreateNetwork", {"NetworkID": nid, "IPv4Data": [
            {"Pool": "10.76.0.0/24", "Gateway": "10.76.0.1/24"}]})[0] == 200
        assert call("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                     "Interface": {"Address": "10.76.0.2/24"}}
                    )[0] == 200
        call.ctl, call.host, call.nid, call.eid = ctl, host, nid, eid  # type: ignore[attr-defined]
        yield call
    finally:
        ctl.cleanup_all()
        ctl.close()


def refused_in_time(call: Callable[[], tuple[int, dict[str, Any]]], fifo: Path,
                    timeout: float = 20) -> str:
    """The call's Err, which must come within ``timeout`` (a plugin that opened the FIFO
    would block: it is then opened for writing to let it go, and the test fails)."""
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.update(answer=call()), daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the plugin blocked opening the SandboxKey")
    status, answer = box["answer"]
    assert status == 500, answer
    message = answer["Err"]
    assert "internal error" not in message and "\n" not in message, message
    return message


def sandbox_keys(tmp_path: Path) -> dict[str, str]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "plain"
    plain.write_text("")
    return {"fifo": str(fifo), "file": str(plain), "dir": str(tmp_path),
            "mount namespace": "/proc/self/ns/mnt", "missing": str(tmp_path / "none"),
            "device": "/dev/null"}


@pytest.mark.parametrize("kind", ["fifo", "file", "dir", "mount namespace", "missing",
                                  "device"])
def test_join_never_opens_a_sandbox_key_that_is_not_a_network_namespace(
        plugin: Any, tmp_path: Path, kind: str) -> None:
    """Docker joins before the container's namespace exists (its SandboxKey is a plain file
    until runc's namespace is bound there), so Join takes the path; nothing may open it
    unless it is a network namespace by then (a FIFO would block the plugin for good)."""
    key = sandbox_keys(tmp_path)[kind]
    box: dict[str, Any] = {}
    worker = threading.Thread(daemon=True, target=lambda: box.update(answer=plugin(
        "NetworkDriver.Join", {"NetworkID": plugin.nid, "EndpointID": plugin.eid,
                               "SandboxKey": key})))
    worker.start()
    worker.join(20)
    if worker.is_alive():
        if kind == "fifo":
            os.close(os.open(key, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the plugin blocked opening the SandboxKey")
    assert box["answer"][0] == 200, box
    assert f"pcp-{plugin.eid[:11]}" in plugin.host.run(["ip", "-br", "link"]).stdout
    assert plugin("NetworkDriver.Leave", {"NetworkID": plugin.nid,
                                          "EndpointID": plugin.eid})[0] == 200


def test_attach_to_a_sandbox_whose_namespace_is_gone_is_one_sentence(
        netns: Callable[..., Namespace], store_url: str) -> None:
    host, holder = netns("host"), netns("holder")
    base = ("--store", store_url, "--host-ns", host.path)
    sleeper = holder.popen(["sleep", "600"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    name, net = unique("s"), unique("n")
    try:
        assert pycnm(*base, "network", "create", net, "--subnet", "10.79.0.0/24"
                     ).returncode == 0
        adopt = pycnm(*base, "sandbox", "create", name, "--netns",
                      f"/proc/{sleeper.pid}/ns/net")
        assert adopt.returncode == 0, adopt.stderr
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    one_error_line(pycnm(*base, "attach", net, name), f"/proc/{sleeper.pid}/ns/net",
                   "does not exist")
    assert pycnm(*base, "--json", "endpoint", "ls").stdout.strip() == "[]"
    assert "pcv-" not in host.run(["ip", "-br", "link"]).stdout
    assert pycnm(*base, "cleanup").returncode == 0


def test_an_option_only_pycnm_sets_never_makes_the_plugin_open_a_path(
        plugin: Any, tmp_path: Path) -> None:
    fifo = sandbox_keys(tmp_path)["fifo"]
    message = refused_in_time(lambda: plugin("NetworkDriver.Join", {
        "NetworkID": plugin.nid, "EndpointID": plugin.eid, "SandboxKey": fifo,
        "Options": {"pycnm.join.ifname": "eth0"}}), Path(fifo))
    assert "pycnm.join.ifname" in message
    status, answer = plugin("NetworkDriver.CreateEndpoint", {
        "NetworkID": plugin.nid, "EndpointID": "c" * 64,
        "Interface": {"Address": "10.76.0.3/24"}, "Options": {"pycnm.join.ifname": "eth0"}})
    assert status == 500 and "pycnm.join.ifname" in answer["Err"]


# --- 5. kernel names from ids: a clash is refused, never resolved by deleting ---------------


def test_an_endpoint_whose_id_starts_like_anothers_cannot_take_its_interface(
        netns: Callable[..., Namespace], store_url: str) -> None:
    host = netns("host")
    first, second = "abcdef012345" + "1" * 52, "abcdef012345" + "2" * 52
    with Controller(store_url, host_ns=host.path) as ctl:
        try:
            net = ctl.new_network(unique("n"), subnet="10.77.0.0/24")
            other = ctl.new_network(unique("n"), subnet="10.77.1.0/24")
            a, b = ctl.new_sandbox(unique("s")), ctl.new_sandbox(unique("s"))
            net.create_endpoint("first", endpoint_id=first).join(a)
            assert ping_eventually(a.netns_name, "10.77.0.1")
            for target in (net, other):  # on its network or another: the host is one
                with pytest.raises(Conflict) as caught:
                    target.create_endpoint("second", endpoint_id=second).join(b)
                message = str(caught.value)
                assert "abcdef012345" in message and "another id" in message, message
            links = host.run(["ip", "-br", "link"]).stdout
            assert f"pcv-{first[:11]}" in links
            assert ping_eventually(a.netns_name, "10.77.0.1")
            assert [ep.id for ep in ctl.endpoints()] == [first]
            # Once the first endpoint is gone, its id's start is free again.
            ctl.endpoint(first).delete(force=True)
            other.create_endpoint("second", endpoint_id=second).join(b)
            assert ping_eventually(b.netns_name, "10.77.1.1")
        finally:
            ctl.cleanup_all()


def test_docker_ids_that_start_alike_are_refused_by_the_plugin(plugin: Any) -> None:
    status, answer = plugin("NetworkDriver.CreateEndpoint", {
        "NetworkID": plugin.nid, "EndpointID": "b" * 10 + "c" * 54,
        "Interface": {"Address": "10.76.0.3/24"}})
    assert status == 500 and "another id" in answer["Err"], answer
    status, answer = plugin("NetworkDriver.CreateNetwork", {
        "NetworkID": "a" * 10 + "d" * 54, "IPv4Data": [{"Pool": "10.78.0.0/24"}]})
    assert status == 500 and "another id" in answer["Err"], answer
    assert [e.id for e in plugin.ctl.endpoints()] == [plugin.eid]
    assert [n.id for n in plugin.ctl.networks()] == [plugin.nid]


# --- 7. one sentence, never "internal error", for input at fault ----------------------------


@pytest.mark.parametrize(("what", "raw", "words"), [
    ("nested arrays", b"[" * 100_000 + b"]" * 100_000, "nests"),
    ("nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nests"),
    ("over 1 MiB", b'{"NetworkID": "' + b"a" * (1 << 20) + b'"}', "larger than"),
    ("not UTF-8", b'{"NetworkID": "\xff\xfe"}', "not valid JSON"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 20 else "")
def test_malformed_bodies_get_one_sentence(plugin: Any, what: str, raw: bytes,
                                           words: str) -> None:
    status, answer = plugin("NetworkDriver.CreateNetwork", None, raw=raw)
    assert status in (413, 500) and words in answer["Err"], answer
    assert "internal error" not in answer["Err"]


def test_cli_errors_are_one_line_and_debug_adds_the_traceback(
        netns: Callable[..., Namespace], store_url: str) -> None:
    host = netns("host")
    base = ("--store", store_url, "--host-ns", host.path)
    one_error_line(pycnm(*base, "network", "rm", "ghost"), "ghost")
    debug = pycnm(*base, "--debug", "network", "rm", "ghost")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_a_sandbox_whose_files_cannot_be_written_is_one_sentence_and_nothing_made(
        netns: Callable[..., Namespace], store_url: str) -> None:
    host = netns("host")
    name = unique("s")
    blocker = Path("/etc/netns") / f"pcsb-{name}"
    blocker.parent.mkdir(exist_ok=True)
    blocker.write_text("a file where pycnm wants a folder\n")
    try:
        result = pycnm("--store", store_url, "--host-ns", host.path, "sandbox", "create", name)
        one_error_line(result, f"sandbox {name}", str(blocker))
        assert blocker.read_text() == "a file where pycnm wants a folder\n"
        assert f"pcsb-{name}" not in os.listdir("/run/netns")
        ls = pycnm("--store", store_url, "--host-ns", host.path, "--json", "sandbox", "ls")
        assert json.loads(ls.stdout) == []
    finally:
        blocker.unlink()
