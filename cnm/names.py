"""Names of every kernel object pycnm makes, derived from ids.

One recognisable prefix per kind keeps ``pycnm cleanup`` and the tests' leak check exact:
anything matching ``KERNEL_NAME_RE`` is pycnm's, nothing else is. Interface names fit the
kernel's IFNAMSIZ (15 characters).
"""

from __future__ import annotations

import os
import re

IFNAMSIZ = 15

BRIDGE_PREFIX = "pcbr-"  # bridge of a bridge network:          pcbr-<nid:10>
HOST_VETH_PREFIX = "pcv-"  # host side of an endpoint's veth:    pcv-<eid:11>
PEER_VETH_PREFIX = "pcp-"  # container side before it moves:     pcp-<eid:11>
MACVLAN_PREFIX = "pcmv-"  # macvlan child before it moves:       pcmv-<eid:10>
SHIM_PREFIX = "pcsh-"  # host shim of a macvlan network:          pcsh-<nid:10>
IPVLAN_PREFIX = "pciv-"  # ipvlan child before it moves:          pciv-<eid:10>
VLAN_PREFIX = "pcvl-"  # 802.1q sub-interface we created:        (we record parent.vid)
VXLAN_PREFIX = "pcvx-"  # VTEP of an overlay network:             pcvx-<vni>
OVERLAY_BRIDGE = "br0"  # bridge inside an overlay namespace

SANDBOX_NETNS_PREFIX = "pcsb-"  # named netns of a sandbox:       pcsb-<name>
OVERLAY_NETNS_PREFIX = "pcov-"  # namespace of an overlay net:    pcov-<vni>
LAB_NETNS_PREFIX = "pclab-"  # lab hosts/routers:                  pclab-<lab>-<node>
LB_NETNS_PREFIX = "pclb-"  # a network's load balancer:            pclb-<nid:10>
INGRESS_PREFIX = "pcig-"  # host end of a load balancer's ingress: pcig-<nid:10>

NFT_TABLE = "pycnm"  # table inet pycnm, ours alone
NFT_INGRESS_TABLE = "pycnm-ingress"  # table ip pycnm-ingress: published service ports
NFT_SERVICES_TABLE = "pycnm-services"  # table ip pycnm-services: VIPs DNATed on bridges
NFT_FAMILY = "inet"

KERNEL_NAME_RE = re.compile(r"^pc(br|v|p|mv|iv|sh|vl|vx|sb|ov|lab|lb|ig)-")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_ID_RE = re.compile(r"[0-9A-Za-z]{12,64}")


# Kernel names keep only the start of an id (IFNAMSIZ): at most this many characters of a
# network's or an endpoint's id (macvlan's pcmv-/pcsh-; the bridge's pcv- take 11). Two
# objects whose ids start alike would get one name, so the core refuses the second.
KERNEL_ID_CHARS = 10


def kernel_claim(kind: str, object_id: str) -> str:
    """The store key (under the host's space) by which one ``kind`` ("networks",
    "endpoints") object holds the kernel names derived from ``object_id``."""
    return f"names/kernel-{kind}/{short(object_id, KERNEL_ID_CHARS)}"


def new_id() -> str:
    """A 64-hex-digit object id, the shape Docker uses. (``os.urandom`` is what
    ``secrets.token_hex`` reads; the module ``secrets`` would load OpenSSL's hashlib, ~5 ms
    of every CLI call that makes an object.)"""
    return os.urandom(32).hex()


def short(object_id: str, length: int) -> str:
    """The first ``length`` characters of an id, for kernel names."""
    return object_id.replace("-", "")[:length]


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + short(network_id, 10)


def host_veth_name(endpoint_id: str) -> str:
    return HOST_VETH_PREFIX + short(endpoint_id, 11)


def peer_veth_name(endpoint_id: str) -> str:
    return PEER_VETH_PREFIX + short(endpoint_id, 11)


def sandbox_netns(sandbox_name: str) -> str:
    return SANDBOX_NETNS_PREFIX + sandbox_name


def is_valid_object_name(name: str) -> bool:
    """Names of networks and sandboxes: what Docker accepts for container names."""
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name))


def is_valid_id(object_id: str) -> bool:
    """An object id: 12 to 64 letters and digits (Docker's are 64 hex digits)."""
    return isinstance(object_id, str) and bool(_ID_RE.fullmatch(object_id))


def is_valid_ifname(name: str) -> bool:
    """A Linux interface name: 1-15 characters, no '/', no whitespace, not '.' or '..'."""
    return (isinstance(name, str) and bool(_IFNAME_RE.fullmatch(name))
            and name not in (".", ".."))


def is_pycnm_kernel_name(name: str) -> bool:
    return bool(KERNEL_NAME_RE.match(name))
