"""--lock-clocks: the exact nvidia-smi calls, checked through an injected runner (nothing touches a GPU)."""

from __future__ import annotations

import subprocess

import pytest

from harness import clocks
from harness.clocks import lock_clocks_plan, locked_clocks
from harness.errors import HarnessError

# The query's answer in the format nvidia-smi printed on an H100 (persistence on, 1980 MHz default/max),
# plus a second GPU with persistence off.
QUERY_OUT = "0, GPU-aaaa, Enabled, 1980, 1980\n1, GPU-bbbb, Disabled, 1755, 1980\n"


class FakeRunner:
    def __init__(self, query=QUERY_OUT, apps="", fail_on=None):
        self.calls: list[list[str]] = []
        self.query, self.apps, self.fail_on = query, apps, fail_on

    def __call__(self, cmd, **kw):
        assert kw.get("check") is False and kw.get("capture_output") is True
        self.calls.append(list(cmd))
        if self.fail_on and self.fail_on(cmd):
            return subprocess.CompletedProcess(cmd, 6, "", "Setting locked GPU clocks is not supported")
        out = ""
        if cmd[1].startswith("--query-gpu"):
            out = self.query
        elif cmd[1].startswith("--query-compute-apps"):
            out = self.apps
        return subprocess.CompletedProcess(cmd, 0, out, "")


@pytest.fixture
def root(monkeypatch):
    monkeypatch.setattr(clocks.os, "geteuid", lambda: 0)


QUERY = ["nvidia-smi", "--query-gpu=index,uuid,persistence_mode,clocks.default_applications.graphics,clocks.max.sm",
         "--format=csv,noheader,nounits", "-i", "0,1"]
APPS = ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"]


def test_calls_in_order_and_restored(root):
    r = FakeRunner()
    with locked_clocks([0, 1], 1500, runner=r) as states:
        assert [s.persistence for s in states] == [True, False]
        during = list(r.calls)
    assert during == [
        QUERY,
        APPS,
        ["nvidia-smi", "-i", "0", "-lgc", "1500,1500"],
        ["nvidia-smi", "-i", "1", "-pm", "1"],  # only where persistence was off
        ["nvidia-smi", "-i", "1", "-lgc", "1500,1500"],
    ]
    assert r.calls[len(during):] == [
        ["nvidia-smi", "-i", "0", "-rgc"],
        ["nvidia-smi", "-i", "1", "-rgc"],
        ["nvidia-smi", "-i", "1", "-pm", "0"],  # back to off; GPU 0 stays on as it was
    ]


def test_plan_matches_the_calls(root):
    r = FakeRunner()
    with locked_clocks([0, 1], None, runner=r):
        pass
    assert lock_clocks_plan([0, 1], None, runner=FakeRunner()) == r.calls
    # default target: each GPU's default applications clock
    assert ["nvidia-smi", "-i", "1", "-lgc", "1755,1755"] in r.calls


def test_plan_without_reading_state():
    plan = lock_clocks_plan([2])
    assert plan[0][-2:] == ["-i", "2"]
    assert ["nvidia-smi", "-i", "2", "-lgc", "<default-app-clock>,<default-app-clock>"] in plan
    assert plan[-2:] == [["nvidia-smi", "-i", "2", "-rgc"], ["nvidia-smi", "-i", "2", "-pm", "0"]]


def test_restores_when_the_run_fails(root):
    r = FakeRunner()
    with pytest.raises(RuntimeError, match="run crashed"):
        with locked_clocks([0, 1], 1500, runner=r):
            raise RuntimeError("run crashed")
    assert r.calls[-3:] == [["nvidia-smi", "-i", "0", "-rgc"], ["nvidia-smi", "-i", "1", "-rgc"],
                            ["nvidia-smi", "-i", "1", "-pm", "0"]]


def test_restores_when_locking_fails_midway(root):
    r = FakeRunner(fail_on=lambda c: c[-2:] == ["-lgc", "1500,1500"] and c[2] == "1")
    with pytest.raises(HarnessError, match="exited 6"):
        with locked_clocks([0, 1], 1500, runner=r):
            pytest.fail("the block must not run when locking failed")
    assert r.calls[-3:] == [["nvidia-smi", "-i", "0", "-rgc"], ["nvidia-smi", "-i", "1", "-rgc"],
                            ["nvidia-smi", "-i", "1", "-pm", "0"]]


def test_restore_failure_is_reported_and_others_still_restored(root):
    r = FakeRunner(fail_on=lambda c: c[-1] == "-rgc" and c[2] == "0")
    with pytest.raises(HarnessError, match="could not restore"):
        with locked_clocks([0, 1], 1500, runner=r):
            pass
    assert ["nvidia-smi", "-i", "1", "-rgc"] in r.calls and r.calls[-1] == ["nvidia-smi", "-i", "1", "-pm", "0"]


def test_refuses_without_root(monkeypatch):
    monkeypatch.setattr(clocks.os, "geteuid", lambda: 1000)
    r = FakeRunner()
    with pytest.raises(HarnessError, match="needs root"):
        with locked_clocks([0], runner=r):
            pass
    assert r.calls == []


def test_refuses_shared_gpu(root):
    r = FakeRunner(apps="4242, GPU-bbbb\n")
    with pytest.raises(HarnessError, match=r"in use by another process: GPU 1 \(pid 4242\)"):
        with locked_clocks([0, 1], 1500, runner=r):
            pass
    assert r.calls == [QUERY, APPS]  # nothing changed, nothing to restore


def test_refuses_target_out_of_range(root):
    r = FakeRunner()
    with pytest.raises(HarnessError, match="outside GPU 0's range"):
        with locked_clocks([0, 1], 2500, runner=r):
            pass
    assert r.calls == [QUERY, APPS]


def test_unparseable_query(root):
    with pytest.raises(HarnessError, match="cannot parse"):
        with locked_clocks([0, 1], runner=FakeRunner(query="[N/A]\n")):
            pass
