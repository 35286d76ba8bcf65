"""Reading live kernel state of a namespace through ``ip -json``: links, addresses,
neighbours and the ids under which a namespace knows its peers' namespaces.

Who does what: the graph, the checks and the realiser's overlay wait ask here what is
really there (not what the topology file says should be). Read only; bounded in time.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

TIMEOUT = 15.0


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    """``ip -json -n NS ARGS`` decoded; [] when the namespace or device is gone."""
    result = subprocess.run(["ip", "-json", "-n", ns, *args], capture_output=True,
                            text=True, timeout=TIMEOUT)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def links(ns: str) -> list[dict[str, Any]]:
    """Every interface with details (kind, master, peer index and namespace id, VNI)."""
    return ip_json(ns, "-details", "link", "show")


def addresses(ns: str, dev: str | None = None, family: int | None = None) -> dict[str, list[str]]:
    """Interface name -> global addresses with prefix length (``10.0.0.2/24``)."""
    args = ([f"-{family}"] if family else []) + ["addr", "show"] + (["dev", dev] if dev else [])
    result: dict[str, list[str]] = {}
    for link in ip_json(ns, *args):
        for info in link.get("addr_info", []):
            if info.get("scope") == "global" and info.get("local"):
                result.setdefault(link["ifname"], []).append(
                    f"{info['local']}/{info.get('prefixlen', 32)}")
    return result


def first_ipv4(ns: str, dev: str) -> str | None:
    """The first global IPv4 address of ``dev`` in ``ns`` (no prefix length)."""
    found = addresses(ns, dev, family=4).get(dev, [])
    return found[0].split("/")[0] if found else None


def neighbour_ips(ns: str, dev: str) -> set[str]:
    """Addresses with a neighbour entry on ``dev`` (e.g. a VTEP's remote endpoints)."""
    return {n["dst"] for n in ip_json(ns, "neigh", "show", "dev", dev) if n.get("dst")}


def peer_namespaces(ns: str) -> dict[int, str]:
    """nsid -> namespace name, as ``ns`` numbers the namespaces its links point into."""
    return {int(item["nsid"]): item["name"] for item in ip_json(ns, "netns", "list-id")
            if "nsid" in item and item.get("name")}
