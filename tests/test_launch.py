"""Launching like the competition: torchrun for every run, DATA_PATH = the folder holding data/fineweb10B/,
the pre-flight checks, a failed run's reason, and the PASS/FAIL verdict with its exit code."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import FIXTURES, make_source, run_cli
from harness import preflight
from harness.campaign import failure_reason, launch_command, make_arm, run_environment
from harness.errors import HarnessError
from harness.results import Campaign, Run, load_runs
from harness.tracks import REPO_ROOT, load_track
from harness.verdict import verdict

CONTRACT = FIXTURES / "competition_contract"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A DATA_PATH root: root/data/fineweb10B with a val shard and 2 train shards."""
    root = tmp_path_factory.mktemp("root")
    make_source(root / "data" / "fineweb10B", 2)
    return root


def _log_text(campaign_dir, k=0):
    run = json.loads((campaign_dir / "runs" / str(k) / "run.json").read_text())
    return run, (campaign_dir / "runs" / str(k) / run["log_file"]).read_text()


# ---------------------------------------------------------------------------------------------------------
# The competition's contract, end to end on CPU (the fixture reads RANK/WORLD_SIZE/LOCAL_RANK, KeyError
# without them, and always opens a gloo process group)


def test_contract_script_runs_under_torchrun_with_one_and_two_processes(data_root, tmp_path):
    one = run_cli("run", CONTRACT, "--runs", "2", "--nproc", "1", "--data-path", data_root, "--out",
                  tmp_path / "one", "--quiet", "--no-telemetry")
    assert one.returncode == 0, one.stdout + one.stderr
    assert one.stdout.strip().splitlines()[-1].startswith("PASS: p=")  # the campaign's last line
    run, log = _log_text(tmp_path / "one")
    assert run["status"] == "ok" and run["final_step"] == 20
    assert run["command"][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    assert log.startswith((CONTRACT / "train_gpt.py").read_text())  # the script's own log, source on top
    assert "world_size=1 grad_accum_steps=8 train_shards=2" in log  # it found both shards where we put them
    two = run_cli("run", CONTRACT, "--runs", "1", "--nproc", "2", "--data-path", data_root, "--out",
                  tmp_path / "two", "--quiet", "--no-telemetry")
    # every run finished, but one run gives no p-value: the verdict fails and has its own exit code
    assert two.returncode == 4, two.stdout + two.stderr
    assert two.stdout.strip().splitlines()[-1].startswith("FAIL: 1 run gives no p-value")
    run2, log2 = _log_text(tmp_path / "two")
    assert "world_size=2 grad_accum_steps=4" in log2 and run2["status"] == "ok"
    # same seed, same global batches: the all-reduced data term makes the losses equal across world sizes
    assert run2["final_val_loss"] == load_runs(tmp_path / "one")[0].final_val_loss
    assert "- verdict: FAIL: 1 run gives no p-value" in (tmp_path / "two" / "record.md").read_text()


def test_compare_takes_data_path_and_judges_the_candidate(data_root, tmp_path):
    r = run_cli("compare", CONTRACT, CONTRACT / "train_gpt.py", "--runs", "1", "--nproc", "1", "--data-path",
                data_root, "--out", tmp_path / "c", "--quiet", "--no-telemetry")
    assert r.returncode == 4, r.stdout + r.stderr  # both arms ran; one candidate run cannot pass the t-test
    assert [x.status for x in load_runs(tmp_path / "c")] == ["ok", "ok"]
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL: ") and "the candidate's claim" in r.stdout
    camp = json.loads((tmp_path / "c" / "campaign.json").read_text())
    assert {a["env"]["DATA_PATH"] for a in camp["arms"].values()} == {str(data_root.resolve())}


def test_a_crash_is_reported_by_the_scripts_own_error_line_not_torchruns_banner(data_root, tmp_path):
    r = run_cli("run", CONTRACT, "--runs", "1", "--nproc", "2", "--data-path", data_root, "--out", tmp_path / "c",
                "--quiet", "--no-telemetry", "--env", "CONTRACT_CRASH_AT=5")
    assert r.returncode == 3, r.stdout + r.stderr
    (run,) = load_runs(tmp_path / "c")
    assert run.reason == "exited with code 1: RuntimeError: simulated failure at step 5"
    output = (tmp_path / "c" / "runs" / "0" / "output.txt").read_text()
    assert "ChildFailedError" in output  # torchrun's report was there to be skipped


def test_without_torchrun_variables_the_contract_script_fails_like_theirs(data_root, tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, str(CONTRACT / "train_gpt.py")], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "DATA_PATH": str(data_root)}, timeout=120)
    assert proc.returncode == 1 and failure_reason(proc.stderr) == "KeyError: 'RANK'"


def test_every_run_is_launched_by_torchrun_and_data_path_defaults_to_the_repo_root(monkeypatch):
    monkeypatch.delenv("DATA_PATH", raising=False)
    arm = make_arm(str(CONTRACT), name="main")
    assert launch_command(arm)[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                       str(CONTRACT / "train_gpt.py")]
    assert run_environment(arm, 0, 0, "x")["DATA_PATH"] == str(REPO_ROOT)  # where `speedrun data` writes
    arm.env["DATA_PATH"] = "/elsewhere"
    assert run_environment(arm, 0, 0, "x")["DATA_PATH"] == "/elsewhere"


# ---------------------------------------------------------------------------------------------------------
# Pre-flight


def _arm(track="short", nproc=None, env=None):
    return make_arm(track, name="main", nproc=nproc, env=dict(env or {}))


def _check(arm):
    preflight.check_arms([arm], [run_environment(arm, 0, 0, "t")])


SMOKE = load_track("short").smoke_env


def test_a_gpu_track_without_cuda_names_the_smoke_mode_with_its_exact_flags(monkeypatch, data_root):
    monkeypatch.setattr(preflight, "visible_gpu_count", lambda: 0)
    with pytest.raises(HarnessError) as e:
        _check(_arm(env={"DATA_PATH": str(data_root)}))
    msg = str(e.value)
    assert "needs CUDA" in msg and "--nproc 1" in msg
    for k, v in SMOKE.items():
        assert f"--env {k}={v}" in msg
    assert "SPEEDRUN_TINY=1" in msg and "SPEEDRUN_VAL_TOKENS=" in msg
    _check(_arm(nproc=1, env={**SMOKE, "DATA_PATH": str(data_root)}))  # the smoke mode passes on CPU
    partial = {k: v for k, v in SMOKE.items() if k != "SPEEDRUN_VAL_TOKENS"}
    with pytest.raises(HarnessError, match="needs CUDA"):  # half the smoke values is the slow trap
        _check(_arm(nproc=1, env={**partial, "DATA_PATH": str(data_root)}))


def test_more_processes_than_gpus_is_refused(monkeypatch, data_root):
    monkeypatch.setattr(preflight, "visible_gpu_count", lambda: 1)
    env = {"DATA_PATH": str(data_root), "SPEEDRUN_NUM_ITERATIONS": "120"}
    with pytest.raises(HarnessError, match=r"--nproc 8 \(the track default\) needs 8 GPUs; this node shows 1"):
        _check(_arm(env=env))
    with pytest.raises(HarnessError, match="--nproc 2 needs 2 GPUs; this node shows 1"):
        _check(_arm(nproc=2, env=env))
    _check(_arm(nproc=1, env=env))
    with pytest.raises(HarnessError, match="shows 0"):  # --env CUDA_VISIBLE_DEVICES= hides the GPU from the runs
        _check(_arm(nproc=1, env={**env, "CUDA_VISIBLE_DEVICES": ""}))


def test_data_check_looks_where_the_script_looks_and_counts_the_shards_needed(monkeypatch, tmp_path, data_root):
    monkeypatch.setattr(preflight, "visible_gpu_count", lambda: 8)
    with pytest.raises(HarnessError, match=r"no data folder .*data/fineweb10B"):
        _check(_arm(env={"DATA_PATH": str(tmp_path)}))
    # the old habit, shards right in the folder given: the message says what DATA_PATH means now
    make_source(tmp_path / "flat", 1)
    with pytest.raises(HarnessError, match="holds shards itself, but DATA_PATH is the folder that holds"):
        _check(_arm(env={"DATA_PATH": str(tmp_path / "flat")}))
    # the full schedule needs [data] train_shards = 9; the root has 2
    with pytest.raises(HarnessError, match=r"has 2 train shard\(s\); track short needs 9 \(its \[data\] train_"):
        _check(_arm(env={"DATA_PATH": str(data_root)}))
    # a shortened schedule needs shortened_train_shards = 1
    _check(_arm(env={"DATA_PATH": str(data_root), "SPEEDRUN_NUM_ITERATIONS": "120"}))
    no_val = tmp_path / "noval"
    make_source(no_val / "data" / "fineweb10B", 1)
    (no_val / "data" / "fineweb10B" / "fineweb_val_000000.bin").unlink()
    with pytest.raises(HarnessError, match="no fineweb_val_"):
        _check(_arm(env={"DATA_PATH": str(no_val), "SPEEDRUN_NUM_ITERATIONS": "8"}))


def test_preflight_refuses_before_anything_is_written(tmp_path):
    # this CPU node has no CUDA: one error line, exit 2, no campaign folder
    r = run_cli("run", "short", "--runs", "1", "--out", tmp_path / "c", "--data-path", tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: track short needs CUDA") and "--env SPEEDRUN_TINY=1" in line
    assert not (tmp_path / "c").exists()
    r = run_cli("run", "short", "--runs", "1", "--out", tmp_path / "c", "--data-path", tmp_path, "--nproc", "1",
                *[a for k, v in SMOKE.items() for a in ("--env", f"{k}={v}")])
    assert r.returncode == 2 and "no data folder" in r.stderr and not (tmp_path / "c").exists()


def test_track_toml_data_and_smoke_tables_are_checked(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    base = 'name = "t"\nscript = "x.py"\nnproc = 1\ntarget = 1.0\n'
    for extra, msg in (('[data]\ntrain_shards = 0', "train_shards must be a whole number >= 1"),
                       ('[data]\nshortened_by = "X"', "shortened_by must be a list"),
                       ('[smoke]\nenv = 3', "[smoke] env must be a table")):
        (folder / "track.toml").write_text(base + extra + "\n")
        with pytest.raises(HarnessError, match=msg.replace("[", r"\[")):
            load_track(folder)
    short = load_track("short")
    assert short.train_shards_needed({}) == 9 and short.train_shards_needed({"SPEEDRUN_NUM_ITERATIONS": "8"}) == 1
    assert short.is_smoke(SMOKE) and not short.is_smoke({"SPEEDRUN_TINY": "1"})


# ---------------------------------------------------------------------------------------------------------
# A failed run's reason


def test_failure_reason_skips_torchruns_report_and_rank_prefixes():
    report = ("E1201 09:52:43.719000 16413 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
              "(exitcode: 1) local_rank: 0 (pid: 1) of binary: python\nTraceback (most recent call last):\n"
              '  File "run.py", line 1, in <module>\ntorch.distributed.elastic.multiprocessing.errors.'
              "ChildFailedError: \n" + "=" * 60 + "\ntrain_gpt.py FAILED\n" + "=" * 60 + "\n")
    ranked = ("# harness: python -m torch.distributed.run ...\nstep:1/10 train_time:5ms step_avg:5.00ms\n"
              "[rank1]: Traceback (most recent call last):\n[rank1]:   File \"train_gpt.py\", line 9\n"
              "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
              "[W1201 09:52:44.000 ProcessGroupNCCL.cpp:1] Warning: destroy_process_group() was not called\n")
    assert failure_reason(ranked + report) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    plain = "data: 2 shards\nthe short track needs CUDA; its CPU smoke mode: X=1\n"
    assert failure_reason(plain + report) == "the short track needs CUDA; its CPU smoke mode: X=1"
    assert failure_reason("step:3/10 train_time:1ms\nerror: the training loss is not finite from step 3 on\n"
                          "nonfinite: report line\n") == "error: the training loss is not finite from step 3 on"
    killed = ("step:7/10 train_time:70ms step_avg:10.00ms\n" + report.replace("train_gpt.py FAILED",
              "Root Cause (first observed failure):\n[0]:\n  rank      : 3 (local_rank: 3)\n"
              "  exitcode  : -9 (pid: 77)  (SIGKILL)\n  traceback : Signal 9 (SIGKILL) received by PID 77"))
    assert failure_reason(killed) == "rank 3 was killed by SIGKILL; its last line: step:7/10 train_time:70ms step_avg:10.00ms"
    assert failure_reason("# harness: x\n") == "(no output)"


def test_failure_reason_says_when_a_data_generator_ran_out_of_shards():
    """The medium record's code on the proxy data (one H200, 2026-12-02): its warm-up drew more validation batches
    than the one val shard holds and died 1,250 s in. The frames and errors as torchrun printed them (code lines
    left out)."""
    out = ("[rank0]: Traceback (most recent call last):\n"
           '[rank0]:   File "/var/tmp/r/.carry/ref/medium-seed000/train_gpt.py", line 1372, in distributed_data_generator\n'
           "[rank0]: StopIteration\n[rank0]: \n"
           "[rank0]: The above exception was the direct cause of the following exception:\n[rank0]: \n"
           "[rank0]: Traceback (most recent call last):\n"
           '[rank0]:   File "/var/tmp/r/.carry/ref/medium-seed000/train_gpt.py", line 1730, in <module>\n'
           "[rank0]: RuntimeError: generator raised StopIteration\n"
           "[rank0]:[W1202 14:45:30.698019993 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() "
           "was not called before program exit\n")
    assert failure_reason(out) == ("RuntimeError: generator raised StopIteration (its data loader "
                                   "distributed_data_generator ran out of shard files: give it more shards, or "
                                   "more names for the same ones)")
    # a StopIteration elsewhere gets no data hint
    other = out.replace("in distributed_data_generator", "in schedule_steps")
    assert failure_reason(other) == "RuntimeError: generator raised StopIteration"


# ---------------------------------------------------------------------------------------------------------
# The verdict


def _runs(losses, arm="main", failed=0):
    out = [Run(index=k, arm=arm, seed=None, status="ok", final_val_loss=x, train_time_s=100.0 + k)
           for k, x in enumerate(losses)]
    return out + [Run(index=len(out) + k, arm=arm, seed=None, status="failed") for k in range(failed)]


CAMPAIGN = Campaign.from_json({"track": {"target": 3.28, "alpha": 0.01}, "arms": {"main": {"nproc": 8}}})


def test_verdict_line_says_pass_or_fail_and_why():
    ok, line = verdict(CAMPAIGN, _runs([3.2760, 3.2770, 3.2765, 3.2772, 3.2768]))
    assert ok and line.startswith("PASS: p=0.0") and "< alpha 0.01 (mean 3.2767 over 5 runs, target 3.28)" in line
    ok, line = verdict(CAMPAIGN, _runs([3.2790, 3.2805, 3.2779]))
    assert not ok and line.startswith("FAIL: p=0.") and ">= alpha 0.01 (mean 3.2791 over 3 runs, target 3.28)" in line
    ok, line = verdict(CAMPAIGN, _runs([3.2700], failed=2))
    assert not ok and "1 run gives no p-value" in line and "2 failed run(s) not counted" in line
    assert verdict(CAMPAIGN, _runs([], failed=1)) == (False, "FAIL: no finished run to test against the target "
                                                             "3.28; 1 failed run(s) not counted")


def test_compare_and_scaling_verdicts_judge_one_named_arm():
    camp = replace(CAMPAIGN, kind="compare", arms={"baseline": {"nproc": 8}, "candidate": {"nproc": 8}})
    runs = _runs([3.2900, 3.2910, 3.2905], arm="baseline") + _runs([3.2760, 3.2770, 3.2765], arm="candidate")
    ok, line = verdict(camp, runs)
    assert ok and "mean 3.2765 over 3 runs" in line and "the candidate's claim" in line
    camp = replace(CAMPAIGN, kind="scaling", arms={"gpus1": {"nproc": 1}, "gpus2": {"nproc": 2}})
    runs = _runs([3.2760, 3.2770, 3.2765], arm="gpus1") + _runs([3.2900, 3.2910, 3.2905], arm="gpus2")
    ok, line = verdict(camp, runs)
    assert not ok and "the claim of gpus2" in line and "mean 3.2905" in line


def test_until_significant_verdict_uses_the_anytime_valid_p():
    from harness.sequential import LOSS_PRIOR, anytime_p_value

    losses = [3.2760, 3.2770, 3.2765, 3.2772]
    ok, line = verdict(replace(CAMPAIGN, until_significant={"max_runs": 20}), _runs(losses))
    assert line.startswith(f"{'PASS' if ok else 'FAIL'}: anytime-valid p={anytime_p_value(losses, 3.28, LOSS_PRIOR):.4f}")


def test_fake_track_campaign_exit_codes_follow_the_verdict(tmp_path):
    # The fake's seeds 0 and 1 end 0.0030 and 0.0024 under 3.28: p ~ 0.035 with 2 runs, a FAIL at 0.01;
    # every run finished, so the exit code is 4 (3 is for failed runs).
    r = run_cli("run", FIXTURES / "fake_track", "--runs", "2", "--out", tmp_path / "c", "--quiet", "--no-telemetry")
    assert r.returncode == 4, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL: p=") and ">= alpha 0.01" in last
    assert f"- verdict: {last}" in (tmp_path / "c" / "record.md").read_text()


def test_scaling_of_a_gpu_track_in_its_smoke_mode_skips_the_gpu_count(monkeypatch, tmp_path):
    from harness.commands.scaling import cmd_scaling

    monkeypatch.setattr(preflight, "visible_gpu_count", lambda: 0)
    # no GPU: the pre-flight's message (naming the smoke mode), before any run
    with pytest.raises(HarnessError, match="needs CUDA"):
        cmd_scaling("short", "1,2", runs=1, out=str(tmp_path / "s"), gpu_count=lambda: 0)
    assert not (tmp_path / "s").exists()
    # the smoke mode on CPU gets past the GPU checks to the data check
    with pytest.raises(HarnessError, match="no data folder"):
        cmd_scaling("short", "1,2", runs=1, out=str(tmp_path / "s"), env=dict(SMOKE), data_path=str(tmp_path),
                    gpu_count=lambda: 0)


def test_campaign_commands_reach_their_first_launch_without_importing_scipy():
    # scipy.stats costs about a second of import (1.9 s under the profiler on the H200 node), paid before the
    # first run starts; it is needed only for the statistics at the end.
    code = ("import sys; import harness.cli, harness.commands.run, harness.commands.compare, harness.campaign; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
