"""A sandbox's /etc/resolv.conf and /etc/hosts, as Docker writes them.

For a named namespace the files go to /etc/netns/NAME/, which ``ip netns exec`` bind-mounts
over /etc. Entries come from the sandbox record. A sandbox served by the embedded resolver
(``cnm.dns``) gets ``nameserver 127.0.0.11`` and ``options ndots:0`` (as Docker writes it);
its own ``dns`` servers are then the resolver's upstreams, dialled from inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re

from cnm import inputs
from cnm.errors import KernelError
from cnm.records import EndpointRecord, SandboxRecord

HOST_RESOLV_CONF = "/etc/resolv.conf"


def host_nameservers(path: str = HOST_RESOLV_CONF) -> tuple[list[str], list[str], list[str]]:
    """Nameservers, search domains and options of the host, minus loopback servers (they
    would point into the sandbox's own loopback), as Docker filters them."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return servers, search, options
    for line in lines:
        parts = re.split(r"\s+", line.split("#", 1)[0].strip())
        if len(parts) < 2:
            continue
        if parts[0] == "nameserver":
            try:
                if not ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                    servers.append(parts[1])
            except ValueError:
                continue
        elif parts[0] in ("search", "domain"):
            search = parts[1:]
        elif parts[0] == "options":
            options.extend(parts[1:])
    return servers, search, options


def host_resolv_conf(host_ns: str | None) -> str:
    """The resolv.conf of the host namespace ``host_ns`` (a path; None: this process's):
    ``/etc/netns/NAME/resolv.conf`` for an emulated host whose namespace is named, if it
    has one (what ``ip netns exec NAME`` shows as its /etc/resolv.conf), else
    /etc/resolv.conf."""
    if host_ns is not None:
        folder, _, name = host_ns.rpartition("/")
        candidate = os.path.join("/etc/netns", name, "resolv.conf")
        if folder == "/run/netns" and os.path.exists(candidate):
            return candidate
    return HOST_RESOLV_CONF


def render_resolv_conf(sandbox: SandboxRecord, served: bool = False,
                       host_conf: str = HOST_RESOLV_CONF) -> str:
    servers, search, options = host_nameservers(host_conf)
    servers = sandbox.dns_servers or servers
    search = sandbox.dns_search or search
    options = sandbox.dns_options or options
    lines = ["# written by pycnm for sandbox " + sandbox.name]
    if served:
        lines[0] += " (names from pycnm's resolver at 127.0.0.11)"
        servers = ["127.0.0.11"]
        options = ["ndots:0", *(o for o in options if not o.startswith("ndots:"))]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def render_hosts(sandbox: SandboxRecord, endpoints: list[EndpointRecord]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    hostname = sandbox.hostname or sandbox.name
    for ep in endpoints:
        for cidr in (ep.address, ep.address_v6):
            if cidr:
                lines.append(f"{ipaddress.ip_interface(cidr).ip}\t{hostname}")
    lines += [f"{ip}\t{name}" for name, ip in sorted(sandbox.extra_hosts.items())]
    return "\n".join(lines) + "\n"


def check_values(sandbox: SandboxRecord) -> None:
    """Refuse (InvalidOption, one sentence) any value of ``sandbox`` that is not what its
    line of the files may hold: no value can add a line. The Controller checks them when
    the sandbox is made; this also covers a record that came from elsewhere."""
    if sandbox.hostname and sandbox.hostname != sandbox.name:  # a name is checked as one
        inputs.hostname(sandbox.hostname, "the hostname")
    for server in sandbox.dns_servers:
        inputs.address(server, "the DNS server")
    for domain in sandbox.dns_search:
        inputs.domain(domain, "the DNS search domain")
    for option in sandbox.dns_options:
        inputs.dns_option(option, "the DNS option")
    for host, ip in sandbox.extra_hosts.items():
        inputs.hostname(host, "the extra host's name")
        inputs.address(ip, f"the address of extra host {host}")


def files_dir(sandbox: SandboxRecord, netns_name: str | None) -> str:
    if netns_name is not None:
        return os.path.join("/etc/netns", netns_name)
    return os.path.join("/run/pycnm/sandboxes", sandbox.id)


def write(
    sandbox: SandboxRecord,
    endpoints: list[EndpointRecord],
    netns_name: str | None,
    hosts_only: bool = False,
    served: bool = False,
    host_conf: str = HOST_RESOLV_CONF,
) -> str:
    """Write the files (only /etc/hosts when endpoints came or went, the one file that
    depends on them); return their folder.

    In place, as Docker does, and never by renaming a new file over the old one: ``ip
    netns exec`` bind-mounts these files over /etc, and a bind mount holds on to the file
    it was given, so a process already running in the sandbox would never see a renamed
    replacement. Each file is small and goes out in one write() (``_write_in_place``).
    """
    check_values(sandbox)
    folder = files_dir(sandbox, netns_name)
    files = [("hosts", render_hosts(sandbox, endpoints))]
    if not hosts_only:
        files += [("resolv.conf", render_resolv_conf(sandbox, served, host_conf)),
                  ("hostname", (sandbox.hostname or sandbox.name) + "\n")]
    try:
        if not hosts_only:
            os.makedirs(folder, mode=0o755, exist_ok=True)
        for name, text in files:
            _write_in_place(os.path.join(folder, name), text)
    except OSError as exc:
        raise KernelError(f"cannot write the files of sandbox {sandbox.name} in {folder}: "
                          f"{exc.strerror or exc}") from exc
    return folder


def _write_in_place(path: str, text: str) -> None:
    """Make the file at ``path`` hold ``text``, in place. New content at least as long as
    the old is written over it (a reader sees the old or the new) and then cut to its
    length: truncating a file to zero first makes ext4 flush it to disk when it is closed
    (its auto_da_alloc safeguard for files replaced by truncation), ~1 ms per file here,
    paid by every join for its hosts file. Shorter content truncates first, as before,
    so no reader ever sees a stale tail."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, 0)
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it all at once; just in case
            written += os.write(fd, data[written:])
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def write_resolv_conf(sandbox: SandboxRecord, netns_name: str | None, served: bool,
                      host_conf: str = HOST_RESOLV_CONF) -> None:
    """Rewrite only resolv.conf (in place, as ``write``): the resolver takes a sandbox over
    or gives it back."""
    check_values(sandbox)
    folder = files_dir(sandbox, netns_name)
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        _write_in_place(os.path.join(folder, "resolv.conf"),
                        render_resolv_conf(sandbox, served, host_conf))
    except OSError as exc:
        raise KernelError(f"cannot write the resolv.conf of sandbox {sandbox.name} in "
                          f"{folder}: {exc.strerror or exc}") from exc


def remove(sandbox: SandboxRecord, netns_name: str | None) -> None:
    folder = files_dir(sandbox, netns_name)
    if not os.path.isdir(folder):
        return  # gone, or never ours (a file of that name is left alone)
    for name in ("resolv.conf", "hosts", "hostname"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
    with contextlib.suppress(OSError):
        os.rmdir(folder)
