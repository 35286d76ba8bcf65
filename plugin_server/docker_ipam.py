"""Docker's IPAM calls as pycnm's IPAM calls: address spaces and pool ids, nothing more.

pycnm's ``Ipam`` already speaks libnetwork's language (pool ids ``SPACE/SUBNET[/RANGE]``,
shared reference-counted pools for identical requests, a gateway request that may take
any address of the subnet), so this layer only names things the way Docker sees them:

- Docker's address spaces are ``pycnm-local`` (this host's IPAM, ``Controller.ipam``) and
  ``pycnm-global`` (the cluster-wide one, ``Controller.global_ipam``, which every host of a
  multi-host network must use). Docker always sends the local one for a local-scope driver,
  so ``--ipam-opt scope=global`` asks for the cluster-wide IPAM explicitly.
- Docker's PoolID is pycnm's pool id with Docker's space in front of the subnet:
  ``pycnm-local/10.1.0.0/24`` is pool ``local/10.1.0.0/24`` of ``Controller.ipam``.
- The gateway request (``RequestAddressType: com.docker.network.gateway``) is the IPAM's
  gateway request: one gateway per pool, so networks sharing a pool share it.
- A request with a subnet is shared (a retried RequestPool, or every host asking for an
  overlay's subnet, gets the same pool with one more reference); a request without one
  always gets a new pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnm.errors import InvalidOption, NotFound
from cnm.ipam import Ipam

if TYPE_CHECKING:
    from cnm.controller import Controller

LOCAL_SPACE = "pycnm-local"
GLOBAL_SPACE = "pycnm-global"
GATEWAY_REQUEST = "com.docker.network.gateway"
SCOPE_OPTION = "scope"


def _pycnm_space(docker_space: str) -> str:
    """pycnm's address space for Docker's: the cluster-wide one draws its default pools
    from 10.0.0.0/8, away from the local pools (172.17-31, 192.168) of every host."""
    return "global" if docker_space == GLOBAL_SPACE else "local"


@dataclass(frozen=True)
class PoolAnswer:
    pool_id: str
    subnet: str


class DockerIpam:
    """Docker's IPAM calls on top of a Controller's two IPAMs."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @staticmethod
    def owns(space: str) -> bool:
        return space in (LOCAL_SPACE, GLOBAL_SPACE)

    def _ipam(self, space: str) -> Ipam:
        return self.controller.global_ipam if space == GLOBAL_SPACE else self.controller.ipam

    def _resolve(self, pool_id: str) -> tuple[Ipam, str]:
        """Docker's PoolID -> (the IPAM holding it, pycnm's pool id)."""
        space, sep, rest = pool_id.partition("/")
        if not self.owns(space) or not sep or not rest:
            raise InvalidOption(
                f"PoolID {pool_id!r} is not one of pycnm's (they look like "
                f"{LOCAL_SPACE}/10.1.0.0/24)"
            )
        return self._ipam(space), f"{_pycnm_space(space)}/{rest}"

    # --- pools ------------------------------------------------------------------------

    def request_pool(
        self, space: str, pool: str, sub_pool: str, options: Mapping[str, Any], v6: bool
    ) -> PoolAnswer:
        """Docker's RequestPool; ``pool`` empty means "choose one"."""
        space = self._choose_space(space, options)
        made = self._ipam(space).request_pool(
            subnet=pool or None, ip_range=sub_pool or None, v6=v6, shared=bool(pool),
            address_space=_pycnm_space(space),
        )
        return PoolAnswer(f"{space}/{made.id.partition('/')[2]}", str(made.subnet))

    def _choose_space(self, space: str, options: Mapping[str, Any]) -> str:
        if space and not self.owns(space):
            raise InvalidOption(
                f"unknown address space {space!r}: pycnm has {LOCAL_SPACE} and {GLOBAL_SPACE}"
            )
        for key, value in options.items():
            if key == SCOPE_OPTION:
                if value not in ("local", "global"):
                    raise InvalidOption(f"--ipam-opt scope must be local or global, not {value!r}")
                if value == "global":
                    space = GLOBAL_SPACE
            elif not str(key).startswith("com.docker."):
                raise InvalidOption(f"unknown --ipam-opt {key!r}: pycnm's IPAM accepts: scope")
        return space or LOCAL_SPACE

    def release_pool(self, pool_id: str) -> None:
        """Docker's ReleasePool: one reference less; an unknown pool is success."""
        ipam, pid = self._resolve(pool_id)
        ipam.release_pool(pid)

    # --- addresses --------------------------------------------------------------------

    def request_address(self, pool_id: str, address: str, options: Mapping[str, Any]) -> str:
        """Docker's RequestAddress: the gateway, a given address or the next free one of
        the ip-range; the answer carries the subnet's prefix length."""
        ipam, pid = self._resolve(pool_id)
        subnet = ipam.get_pool(pid).subnet
        # The gateway is one per pool (a shared pool's networks share it), and may lie
        # outside the ip-range; any other address comes from the range.
        gateway = options.get("RequestAddressType") == GATEWAY_REQUEST
        got = ipam.request_address(pid, address or None, gateway=gateway)
        return f"{got}/{subnet.prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        """Docker's ReleaseAddress; an address not held, or a pool gone, is success."""
        ipam, pid = self._resolve(pool_id)
        ipam.release_address(pid, address)

    # --- for CreateNetwork ------------------------------------------------------------

    def pool_for(self, space: str, subnet: str) -> str:
        """pycnm's pool id behind a pool Docker got from us (CreateNetwork names only the
        space and the subnet); "" for pools of Docker's own IPAM."""
        if not self.owns(space):
            return ""
        for candidate in (space, GLOBAL_SPACE, LOCAL_SPACE):  # scope=global pools too
            for pool in self._ipam(candidate).list_pools():
                if str(pool.subnet) == subnet:
                    return pool.id
        raise NotFound(f"subnet {subnet} of address space {space} was never requested from "
                       "pycnm's IPAM (RequestPool)")
