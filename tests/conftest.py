"""The fixtures come from the netns_fixtures pytest plugin, loaded through the installed
package's entry point (scripts/setup.sh installs it); this loads it by name only in a
checkout that is not installed."""

import importlib.metadata

if not any(ep.name == "netns_fixtures"
           for ep in importlib.metadata.entry_points(group="pytest11")):
    pytest_plugins = ["netns_fixtures.plugin"]
