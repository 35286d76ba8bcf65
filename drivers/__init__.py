"""Network drivers, loaded by name. Each owns its data plane and talks to the kernel only
through ``cnm.osl``."""

from __future__ import annotations

import importlib

from cnm.driverapi import Driver, DriverContext
from cnm.errors import InvalidOption

# name -> "module:Class"; imported on first use so a driver's imports cost nothing until then.
REGISTRY: dict[str, str] = {
    "bridge": "drivers.bridge:BridgeDriver",
    "macvlan": "drivers.macvlan:MacvlanDriver",
    "ipvlan": "drivers.ipvlan:IpvlanDriver",
    "overlay": "drivers.overlay:OverlayDriver",
}


def available() -> list[str]:
    return sorted(REGISTRY)


def load(name: str, ctx: DriverContext) -> Driver:
    """Instantiate the driver called ``name``."""
    if name not in REGISTRY:
        raise InvalidOption(f"unknown driver {name!r}: choose one of {', '.join(available())}")
    module_name, _, class_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise InvalidOption(f"driver {name!r} is not available in this build") from None
        raise
    driver_class: type[Driver] = getattr(module, class_name)
    return driver_class(ctx)
