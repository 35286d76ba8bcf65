"""netem on a running lab, measured: delay and loss set through the lab file and through
``pycnm lab netem`` show up in real ping statistics (ranges, not exact values; every ping
count is bounded), are read back from the kernel, and go with ``--reset``. Where the kernel
has no netem qdisc (this project's machines), the same commands are refused in one
sentence; the measuring test then runs under Debian's stock kernel in the VM.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from tests.integration.test_lab_tools import NETEM_LAB, passed
from tests.integration.test_labs import LABS, lab_objects, pycnm, unique_lab

pytestmark = pytest.mark.root


def ping_stats(handle, count: int, interval: float = 0.02) -> tuple[float, float]:
    """(loss in percent, median round trip in ms) of ``count`` pings from a to b."""
    out = handle.exec("a", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                            "10.77.0.2"], timeout=count * (interval + 1) + 30).stdout
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
    sent = int(re.search(r"(\d+) packets transmitted", out)[1])  # type: ignore[index]
    loss = 100 * (sent - len(rtts)) / sent
    return loss, statistics.median(rtts) if rtts else float("nan")


@pytest.mark.kernel("sch_netem")
@pytest.mark.timeout(900)  # under the VM's emulated CPU each pycnm command takes seconds
def test_netem_delay_and_loss_are_measured(lab, tmp_path: Path) -> None:
    from netns_fixtures.lab.netem import Netem, parse

    name = unique_lab()
    path = tmp_path / "lab.yaml"
    path.write_text(NETEM_LAB.replace("LABNAME", name))
    handle = lab(path, name=name)
    # From the file: 20 ms on each end, so about 40 ms a round trip.
    loss, rtt = ping_stats(handle, 20)
    assert loss == 0 and 38 <= rtt <= 120, (loss, rtt)
    assert handle.netem_all() == {"a": {"eth0": Netem(delay_us=20_000)},
                                  "b": {"eth0": Netem(delay_us=20_000)}}
    # Changed on the running lab: 50 ms and 30 % loss on a's side only (the command line),
    # b's impairment removed (the API).
    pycnm("lab", "netem", "--lab", name, "a", "eth0", "--delay", "50ms", "--loss", "30%")
    assert handle.netem_reset("b", "eth0") and not handle.netem_reset("b", "eth0")
    loss, rtt = ping_stats(handle, 200, interval=0.01)
    assert 15 <= loss <= 45, loss  # 30 % of requests lost; replies are not impaired
    assert 48 <= rtt <= 150, rtt
    data = json.loads(pycnm("lab", "netem", "--lab", name, "show", "--json").stdout)
    assert data == [{"Node": "a", "Interface": "eth0",
                     "Netem": {"delay": "50ms", "loss": "30%"}}]
    live = handle.inspect(networks=False)
    assert live["links"][0]["netem"] == {"a:eth0": "delay 50ms loss 30%"}
    # Every setting goes to the kernel and comes back as it was given.
    every = {"delay": "10ms", "jitter": "2ms", "loss": "1%", "rate": "10mbit",
             "corrupt": "0.5%", "duplicate": "0.1%", "reorder": "5%"}
    handle.netem("a", "eth0", parse(every))
    assert handle.netem_all()["a"]["eth0"].to_dict() == every
    assert handle.netem_reset("a", "eth0") and handle.netem_all() == {}
    loss, rtt = ping_stats(handle, 20)
    assert loss == 0 and rtt < 20, rtt
    # The file's netem changed and applied: in place, the link itself untouched.
    index = handle.exec("a", ["cat", "/sys/class/net/eth0/ifindex"]).stdout
    path.write_text(NETEM_LAB.replace("LABNAME", name).replace("{delay: 20ms}",
                                                               "{delay: 30ms}"))
    plan = handle.apply(path, progress=lambda _line: None, detach=False)
    assert [str(c) for c in plan.changes] == [
        "~ netem on a:eth0-b:eth0: delay 30ms"], plan
    assert handle.netem_all()["b"]["eth0"] == Netem(delay_us=30_000)
    assert handle.exec("a", ["cat", "/sys/class/net/eth0/ifindex"]).stdout == index
    loss, rtt = ping_stats(handle, 20)
    assert loss == 0 and 58 <= rtt <= 150, (loss, rtt)
    assert passed(handle.check())


@pytest.mark.kernel(absent="sch_netem")
def test_netem_on_a_kernel_without_it_is_one_sentence(lab, tmp_path: Path) -> None:
    name = unique_lab()
    path = tmp_path / "lab.yaml"
    path.write_text(NETEM_LAB.replace('LABNAME', name))
    result = pycnm("lab", "up", str(path), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is not set)" in result.stderr
    assert lab_objects(name) == []
    handle = lab(LABS / "01-bridge" / "lab.yaml", name=name)
    result = pycnm("lab", "netem", "--lab", name, "c1", "eth0", "--delay", "5ms",
                   check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no netem qdisc" in result.stderr
    assert handle.netem_all() == {}
