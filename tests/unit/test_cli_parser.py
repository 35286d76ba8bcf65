"""The CLI's parser built lazily (only the chosen command's module) against the parser with
every module registered; ``--json`` before and after the sub-command; the hand-off's
request checks and keys; the light way into pyroute2. No root needed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnm.cli import COMMANDS, build_parser, chosen_command, handoff
from cnm.cli.daemon import BadRequest, parse_request

REPO = Path(__file__).resolve().parents[2]


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def full_parser() -> argparse.ArgumentParser:
    return build_parser()


def test_the_command_table_lists_what_the_modules_register_in_order() -> None:
    sub = subcommands(full_parser())
    registered = [(a.dest, a.help) for a in sub._choices_actions]
    table = [(name, help_line) for _, commands in COMMANDS for name, help_line in
             commands.items()]
    assert registered == table


def test_top_level_help_reads_the_same_without_importing_the_modules() -> None:
    assert build_parser(["--help"]).format_help() == full_parser().format_help()
    assert build_parser([]).format_help() == full_parser().format_help()
    assert build_parser(["no-such-command"]).format_help() == full_parser().format_help()


@pytest.mark.parametrize("name", [n for _, commands in COMMANDS for n in commands])
def test_each_command_is_parsed_by_its_own_module_alone(name: str) -> None:
    lazy = subcommands(build_parser([name]))
    full = subcommands(full_parser())
    assert lazy.choices[name].format_help() == full.choices[name].format_help()
    # Only that command's module was registered (its siblings share the module).
    module = next(m for m, commands in COMMANDS if name in commands)
    siblings = next(commands for m, commands in COMMANDS if m == module)
    assert set(lazy.choices) == set(siblings)


@pytest.mark.parametrize("argv", [
    ["network", "create", "web", "--subnet", "10.1.0.0/24", "-o", "mtu=1400"],
    ["--store", "sqlite:///x.db", "--host-ns", "h1", "attach", "web", "c1", "--ip", "10.1.0.9"],
    ["--json", "endpoint", "ls", "--network", "web"],
    ["endpoint", "ls", "--json"],
    ["-v", "sandbox", "create", "c1", "--dns", "10.0.0.2", "--add-host", "db=10.0.0.3"],
    ["--host-id", "n1", "detach", "web", "c1"],
    ["sandbox", "exec", "c1", "--", "ip", "--json", "addr"],
    ["--sto", "sqlite:///abbrev.db", "network", "ls"],
    ["--store=sqlite:///eq.db", "network", "inspect", "a", "b"],
    ["lab", "down", "bridge"],
])
def test_lazy_and_full_parsers_agree(argv: list[str]) -> None:
    lazy = vars(build_parser(argv).parse_args(argv))
    full = vars(full_parser().parse_args(argv))
    assert lazy.keys() == full.keys()
    assert {k: v for k, v in lazy.items() if k != "handler"} == \
        {k: v for k, v in full.items() if k != "handler"}
    assert lazy["handler"].__qualname__ == full["handler"].__qualname__


@pytest.mark.parametrize("argv", [
    ["bogus"], ["network"], ["network", "bogus"], ["attach", "only-one"],
    ["--store"], ["network", "ls", "--bogus"], ["-h", "attach"],
])
def test_lazy_and_full_parsers_fail_alike(argv: list[str], capsys) -> None:
    outcomes = []
    for parser in (build_parser(argv), full_parser()):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        captured = capsys.readouterr()
        outcomes.append((exit_info.value.code, captured.out, captured.err))
    assert outcomes[0] == outcomes[1]


def test_json_is_accepted_before_and_after_the_sub_command() -> None:
    def parse(*argv: str) -> bool:
        return bool(build_parser(list(argv)).parse_args(list(argv)).json)

    assert parse("--json", "endpoint", "ls")
    assert parse("endpoint", "ls", "--json")
    assert parse("--json", "endpoint", "ls", "--json")
    assert not parse("endpoint", "ls")
    assert parse("network", "inspect", "web", "--json")
    assert parse("attach", "web", "c1", "--json")
    assert parse("lab", "ls", "--json")
    # A command run inside a sandbox keeps its own --json.
    args = build_parser(["sandbox", "exec", "c1", "ip", "--json", "a"]).parse_args(
        ["sandbox", "exec", "c1", "ip", "--json", "a"])
    assert args.argv == ["ip", "--json", "a"] and not args.json


def test_the_chosen_command_is_the_first_word_after_the_global_options() -> None:
    assert chosen_command(["--store", "network", "attach", "a", "b"]) == "attach"
    assert chosen_command(["--json", "-v", "network", "ls"]) == "network"
    assert chosen_command(["--help", "network"]) is None
    assert chosen_command(["-v", "-h", "network"]) is None
    assert chosen_command(["network", "create", "--help"]) == "network"
    assert chosen_command(["--json", "lab", "-h"]) == "lab"
    assert chosen_command(["--store"]) is None
    assert chosen_command([]) is None


# --- the hand-off's keys and requests -----------------------------------------------------


@pytest.mark.parametrize(("store", "portable"), [
    (None, True), ("", True), ("sqlite:///var/lib/x.db", True), ("/tmp/x.db", True),
    ("sqlite://rel/x.db", False), ("x.db", False), ("./x.db", False), ("memory://", False),
    ("etcd://127.0.0.1:2379", True), ("etcds://h:1?ca=/etc/ca.pem", True),
    ("etcds://h:1?ca=ca.pem", False), ("etcd://h:1?password_file=pw", False),
    ("bogus://x", False),
])
def test_only_stores_every_process_names_alike_are_handed_off(store: str | None,
                                                              portable: bool) -> None:
    assert (handoff.host_key(store, None, "n1") is not None) is portable


def test_the_key_follows_host_namespace_host_id_store_and_etcd_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = handoff.host_key("/s.db", None, "n1")
    assert base is not None
    assert base == handoff.host_key("/s.db", None, "n1")
    assert handoff.socket_path(base).startswith(handoff.SOCKET_DIR + "/n1-")
    assert handoff.host_key("/s.db", None, "n2") != base
    assert handoff.host_key("/other.db", None, "n1") != base
    assert handoff.host_key("/s.db", "/proc/1/ns/mnt", "n1") != base  # another "namespace"
    assert handoff.host_key("/s.db", "relative/ns", "n1") is None
    assert handoff.host_key("/s.db", "no-such-netns-xyz", "n1") is None
    assert handoff.host_key("/s.db", None, "../../etc") is None  # never a path
    assert handoff.host_key("/s.db", None, "n1\n") is None
    monkeypatch.setenv("PYCNM_ETCD_USER", "u")
    assert handoff.host_key("/s.db", None, "n1") != base
    monkeypatch.setenv("PYCNM_ETCD_CA", "relative-ca.pem")
    assert handoff.host_key("etcds://h:1", None, "n1") is None


@pytest.mark.parametrize(("argv", "scanned"), [
    (["network", "ls"], (None, None, None, "network", "ls")),
    (["--store", "/s.db", "--host-ns=h1", "--json", "attach", "n", "c"],
     ("/s.db", "h1", None, "attach", None)),
    (["--host-id", "x", "sandbox", "rm", "a", "-h"], None),  # help: argparse, here
    (["-v", "network", "ls"], None), (["--debug", "network", "ls"], None),
    (["--sto", "/s.db", "network", "ls"], None),  # an abbreviation: argparse, here
    (["--store"], None), ([], None), (["network"], None), (["network", "--json"], None),
])
def test_the_scan_reads_only_plain_lines(argv: list[str], scanned: object,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYCNM_STORE", "PYCNM_HOST_NS", "PYCNM_HOST_ID"):
        monkeypatch.delenv(name, raising=False)
    assert handoff.scan(argv) == scanned


def test_the_scan_takes_the_defaults_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCNM_STORE", "/env.db")
    monkeypatch.setenv("PYCNM_HOST_NS", "h9")
    assert handoff.scan(["network", "ls"]) == ("/env.db", "h9", None, "network", "ls")
    assert handoff.scan(["--store", "/s.db", "network", "ls"])[0] == "/s.db"  # type: ignore[index]


def wire(argv: list[str] | None = None, key: object = None, count: str | None = None,
         head: bytes = handoff.MAGIC) -> bytes:
    real = handoff.host_key("/s.db", None, "n1")
    assert real is not None
    fields = list(key) if isinstance(key, tuple) else [*real[:4]]  # type: ignore[arg-type]
    etcd = list(real[4])
    fields += [count if count is not None else str(len(etcd)), *etcd]
    fields += ["network", "ls"] if argv is None else argv
    return head + b"\n" + "\0".join(fields).encode()


def test_a_well_formed_request_is_read_back() -> None:
    argv, key = parse_request(wire())
    assert argv == ["network", "ls"] and key == handoff.host_key("/s.db", None, "n1")
    real = handoff.host_key("/s.db", None, "n1")
    assert real is not None
    assert parse_request(handoff.encode_request(real, ["attach", "n", "c"])) == (
        ["attach", "n", "c"], real)


@pytest.mark.parametrize("data", [
    b"", b"not a request", b'{"argv": ["network", "ls"]}',
    wire(head=b"pycnm-cli 2"), wire(argv=[]), wire(argv=["x"] * 5000), wire(count="x"),
    wire(count="7"), wire(count="123"),
    wire(key=("1:2", "3:4", "../etc", "")), wire(key=("1", "3:4", "n1", "")),
    wire(key=("1:2", "3:x", "n1", "")),
])
def test_malformed_requests_are_refused(data: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(data)


# --- pyroute2 without its __init__ -------------------------------------------------------


def test_pyroute2_messages_come_without_the_whole_library_which_stays_reachable() -> None:
    script = """
import sys
from cnm.osl import light_pyroute2
from cnm.osl.links import address_request
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
assert not light_pyroute2.fully_loaded(), "messages brought the whole library"
assert "pyroute2.ndb" not in sys.modules and "pyroute2.ipdb" not in sys.modules
from pyroute2 import netlink  # a submodule: still no whole library
assert not light_pyroute2.fully_loaded()
from pyroute2 import IPRoute, NDB  # names of the package: its __init__ runs now
assert light_pyroute2.fully_loaded() and IPRoute.__name__ == "IPRoute"
import pyroute2
assert pyroute2.IPRoute is IPRoute and pyroute2.NDB is NDB
try:
    pyroute2.NoSuchThing
except AttributeError:
    pass
else:
    raise AssertionError("a missing name must stay missing")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_cli_imports_nothing_heavy_to_hand_a_command_off() -> None:
    script = """
import sys
from cnm.cli import build_parser, handoff
from cnm.cli import main
for argv in (["network", "ls"], ["attach", "web", "c1"], ["sandbox", "rm", "c1"]):
    scanned = handoff.scan(argv)
    assert scanned is not None and scanned[3:] in handoff.HANDOFF, argv
    key = handoff.host_key(*scanned[:3])
    handoff.encode_request(key, argv)
    handoff.send(["--store", "/nonexistent/pycnm-test.db", *argv])  # no daemon: None
heavy = [m for m in ("argparse", "re", "json", "typing", "socket", "logging", "pyroute2",
                     "cnm.controller", "sqlite3", "cnm.osl") if m in sys.modules]
print(heavy)
"""
    # -S: the modules site's .pth hooks import do not count (bin/pycnm starts Python so)
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_launcher_shows_the_same_help_as_the_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYCNM_PYTHON": sys.executable}
    launched = subprocess.run([str(REPO / "bin" / "pycnm"), "--help"], capture_output=True,
                              text=True, env=env, timeout=120)
    module = subprocess.run([sys.executable, "-m", "cnm.cli", "--help"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert launched.returncode == module.returncode == 0
    assert launched.stdout == module.stdout and "attach" in launched.stdout


def test_site_hooks_run_before_the_cli_works_in_its_own_process() -> None:
    script = """
import site, sys
from cnm.cli import complete_site
assert sys.flags.no_site and site.ENABLE_USER_SITE is None
complete_site()
assert site.ENABLE_USER_SITE is not None  # site.main() ran: the .pth hooks too
before = list(sys.path)
complete_site()  # once only
assert sys.path == before
print("ok")
"""
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_rendered_help_is_argparse_s_for_this_python() -> None:
    from cnm.cli import FRONT_ENDS, help_text

    if sys.version_info[:2] == help_text.PYTHON:
        assert help_text.render() == help_text.TEXT, (
            "the parser changed: run `python3 -m cnm.cli.help_text` to render it again")
    else:  # another Python words its help its own way: argparse renders it there
        assert not help_text.matches_argparse(FRONT_ENDS)


def argparse_help(columns: int) -> str:
    script = "from cnm.cli import build_parser\nprint(build_parser().format_help(), end='')"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, check=True, timeout=120).stdout


@pytest.mark.parametrize("columns", [80, 60, 132])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_reads_as_argparse_renders_it_at_every_width(flag: str, columns: int) -> None:
    # what the launcher prints, with argparse left out when the rendered text fits
    script = (f"import sys\nfrom cnm.cli import main\ntry:\n    code = main([{flag!r}])\n"
              "except SystemExit as exit:\n    code = exit.code\n"
              "sys.stderr.write(f'{code} {\"argparse\" in sys.modules}')")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns)}
    shown = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                           text=True, env=env, timeout=120)
    assert shown.stdout == argparse_help(columns)
    from cnm.cli import help_text

    rendered = columns == help_text.WIDTH and sys.version_info[:2] == help_text.PYTHON
    assert shown.stderr == f"0 {not rendered}"


def _help_of(*words: str) -> tuple[int, str]:
    """What ``pycnm WORDS`` prints on stdout and its exit code (help exits through
    SystemExit)."""
    script = (f"import sys\nfrom cnm.cli import main\ntry:\n    code = main({list(words)!r})\n"
              "except SystemExit as exit:\n    code = exit.code\nsys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, timeout=120)
    return shown.returncode, shown.stdout + shown.stderr


@pytest.mark.parametrize("words", [
    [name] for _, commands in COMMANDS for name in commands
] + [["network", "create"], ["lab", "up"], ["service", "create"], ["sandbox", "rm"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_prints_its_own_help(words: list[str], flag: str) -> None:
    # `pycnm network create --help` is how people learn a command's options
    code, shown = _help_of(*words, flag)
    assert code == 0, shown
    assert shown.startswith(f"usage: pycnm {' '.join(words)} "), shown
    code, shown = _help_of("--json", *words, flag)  # after a global option too
    assert code == 0 and shown.startswith(f"usage: pycnm {' '.join(words)} "), shown


@pytest.mark.parametrize(("flag", "value", "form"), [
    ("--add-host", "db:10.0.0.3", "NAME=IP"),  # Docker's older colon form
    ("--aux-address", "router", "NAME=IP"),
    ("-o/--opt", "mtu", "KEY=VALUE"),
    ("--label", "=x", "KEY=VALUE"),
])
def test_a_pair_flag_names_the_form_its_help_shows(flag: str, value: str, form: str) -> None:
    from cnm.cli.network import key_values
    from cnm.errors import InvalidOption

    with pytest.raises(InvalidOption) as caught:
        key_values([value], flag)
    assert str(caught.value) == f"{flag} needs {form}, got {value!r}"
