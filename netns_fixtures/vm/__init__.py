"""Tests that need a kernel feature this machine lacks run under Debian's stock kernel in a
QEMU virtual machine, all of them in one boot, as part of the same pytest run.

Who does what:

- ``netns_fixtures.kernelfeatures`` tells which features this kernel has (by trying them);
- ``machine`` finds the cached kernel and virtme-ng (``scripts/setup.sh`` fetches them)
  and boots the VM once, under ``flock /tmp/pycnm-locks/vm.lock``, with this machine's
  root file system shared read-only and one writable results folder;
- ``guest`` is what runs inside the VM: it loads the modules and runs pytest on exactly
  the tests it is given, which write each report as a JSON line into the results folder;
- ``plugin`` is the pytest side on the host: it routes ``@pytest.mark.kernel(...)`` tests
  whose features are missing here to the VM, boots it when the first of them comes up,
  and replays each test's in-VM reports as that test's own outcome, so a failure inside
  fails the run and nothing is skipped.

Why a VM and not a skip: a feature the code supports must be tested somewhere the suite
runs; Debian's own kernel has 8021q, ipvlan, dummy and IPVS, and QEMU's software
emulation boots it here in seconds. Why one boot: everything is slow under emulation
(importing pyroute2 takes seconds), so the cost is paid once per run.
"""

import os


def time_factor() -> float:
    """How much slower than the host things run here: the VM's guest sets
    ``PYCNM_TIME_FACTOR`` (emulation); fixtures stretch their start-up deadlines by it."""
    try:
        return max(1.0, float(os.environ.get("PYCNM_TIME_FACTOR", "1")))
    except ValueError:
        return 1.0
