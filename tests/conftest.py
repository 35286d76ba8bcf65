"""Fixtures come from the netns_fixtures pytest plugin (an installed entry point); this
keeps the suite runnable from a checkout that is not installed."""

import importlib.metadata

_installed = any(
    ep.name == "netns_fixtures"
    for ep in importlib.metadata.entry_points(group="pytest11")
)
pytest_plugins = [] if _installed else ["netns_fixtures.plugin"]
