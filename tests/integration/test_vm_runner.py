"""The kernel-feature marker, in a child pytest run: a test whose feature this kernel has
runs here; one whose feature is missing goes to the VM and, when the VM cannot boot, fails
with a sentence saying what to run (never a skip). The VM itself is exercised by every
``@pytest.mark.kernel`` test of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_fixtures import kernelfeatures
from tests.integration.test_fixtures import _run_pytest

pytestmark = pytest.mark.root


@pytest.mark.kernel(absent="ipvlan")  # the child's "missing" feature must really be missing
def test_a_missing_feature_without_a_vm_fails_and_a_present_one_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kernelfeatures.has("macvlan")
    monkeypatch.setenv("PYCNM_VM_DIR", str(tmp_path / "no-vm-here"))
    result = _run_pytest(tmp_path, """
        import pytest

        @pytest.mark.kernel("macvlan")
        def test_here():
            pass

        @pytest.mark.kernel("ipvlan")
        def test_in_the_vm():
            pass
    """, "-rA")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in output and "skipped" not in output, output
    assert "PASSED test_child.py::test_here" in output, output
    assert "FAILED test_child.py::test_in_the_vm" in output, output
    assert "run scripts/setup.sh" in output, output


def test_unknown_features_are_named() -> None:
    with pytest.raises(kernelfeatures.UnknownFeature) as caught:
        kernelfeatures.check_names(["8021q", "vlan"])
    assert "'vlan'" in str(caught.value) and "8021q" in str(caught.value)
