"""Campaigns end to end with a fast fake track: results layout, failures, Ctrl-C and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from conftest import FIXTURES, REPO, run_cli, sigint_as_in_a_terminal
from harness.campaign import make_arm, parse_env_pairs, run_campaign
from harness.errors import HarnessError
from harness.record_block import parse_blocks
from harness.record_md import write_record
from harness.results import load_runs

FAKE = FIXTURES / "fake_track"


def campaign(tmp_path, track, n=2, env=None, **kw):
    arm = make_arm(str(FAKE), name="main", env=env or {})
    arm.track = replace(arm.track, **kw) if kw else arm.track
    out = run_campaign(tmp_path / "c", [arm], ["main"] * n, telemetry=False, on_finish=write_record)
    return out, load_runs(out), json.loads((out / "campaign.json").read_text())


def test_ok_campaign_writes_the_layout_and_block(tmp_path, fake_track):
    out, runs, camp = campaign(tmp_path, fake_track, n=3)
    assert camp["status"] == "complete" and camp["schedule"] == ["main"] * 3
    assert [r.status for r in runs] == ["ok"] * 3
    assert [r.seed for r in runs] == [0, 1, 2]
    for k, r in enumerate(runs):
        d = out / "runs" / str(k)
        assert (d / "output.txt").exists() and list((d / "logs").glob("*.txt"))
        assert r.final_step == 20 and r.total_steps == 20
        assert r.train_time_s == pytest.approx(r.train_time_ms / 1000)
        assert r.val_curve[-1] == [20, r.final_val_loss]
        assert r.timed_window_unix[0] <= r.timed_window_unix[1]
    # Seeds reach the script: the fake's final loss depends on SPEEDRUN_SEED.
    assert len({r.final_val_loss for r in runs}) == 3
    (block,) = parse_blocks((out / "record.md").read_text())
    assert block.losses == [r.final_val_loss for r in runs]
    assert block.times == [round(r.train_time_s, 3) for r in runs]
    assert block.target == 3.28


@pytest.mark.parametrize("mode,reason", [
    ("crash", "exited with code 1"),
    ("nan", "non-finite val_loss"),
    ("cutoff", "never printed its final val_loss line"),
])
def test_failed_runs_are_recorded_and_the_campaign_goes_on(tmp_path, fake_track, mode, reason):
    out, runs, camp = campaign(tmp_path, fake_track, n=2, env={"FAKE_MODE": mode})
    assert camp["status"] == "complete"
    assert [r.status for r in runs] == ["failed", "failed"]
    assert all(reason in r.reason for r in runs), runs[0].reason
    # The window of a run that never finished ends at its last step line (telemetry is summarised over it).
    start, end = runs[0].timed_window_unix
    assert start < end <= runs[0].ended_unix
    assert "No run finished successfully" in (out / "record.md").read_text()


def test_hung_run_is_killed_with_its_process_group(tmp_path, fake_track):
    t0 = time.time()
    # 8 s: longer than torchrun and the script take to start silently on a busy machine
    out, runs, _ = campaign(tmp_path, fake_track, n=1, env={"FAKE_MODE": "hang"}, hang_timeout_s=8.0)
    assert runs[0].status == "failed" and runs[0].reason.startswith("hung: no new output for 8 s")
    assert time.time() - t0 < 40
    # The sleeping script is gone, not left behind holding the GPU.
    out_text = (out / "runs" / "0" / "output.txt").read_text()
    pid = int(out_text.split("about to hang pid=")[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_silent_compile_that_fills_its_cache_is_not_a_hang(tmp_path, fake_track, monkeypatch):
    """A cold start that prints nothing for longer than the hang timeout while its compile cache grows (the medium
    record's code printed nothing for 925 s on one H200) runs on; once the cache stops growing too, it is hung."""
    import harness.campaign as campaign_module
    monkeypatch.setattr(campaign_module, "COMPILE_CHECK_S", 1.0)
    _, runs, _ = campaign(tmp_path / "a", fake_track, n=1, env={"FAKE_MODE": "compile", "FAKE_COMPILE_S": "20"},
                          hang_timeout_s=8.0)
    assert runs[0].status == "ok", runs[0].reason
    record = runs[0].compile_cache
    assert record["entries_after"] - record["entries_before"] == 20
    _, runs, _ = campaign(tmp_path / "b", fake_track, n=1, env={"FAKE_MODE": "compile-hang", "FAKE_COMPILE_S": "3"},
                          hang_timeout_s=8.0)
    assert runs[0].status == "failed"
    assert runs[0].reason.startswith("hung: no new output for 8 s and no new compile-cache file"), runs[0].reason
    # Without the harness's cache there is nothing to watch: the same silent compile is a hang.
    monkeypatch.setenv("SPEEDRUN_NO_CACHE", "1")
    _, runs, _ = campaign(tmp_path / "c", fake_track, n=1, env={"FAKE_MODE": "compile", "FAKE_COMPILE_S": "20"},
                          hang_timeout_s=8.0)
    assert runs[0].status == "failed" and runs[0].reason.startswith("hung: no new output for 8 s (last"), runs[0].reason


def test_wall_timeout(tmp_path, fake_track):
    _, runs, _ = campaign(tmp_path, fake_track, n=1, env={"FAKE_MODE": "hang"}, timeout_s=1.5,
                          hang_timeout_s=100.0)
    assert runs[0].status == "failed" and "timed out after 2 s" in runs[0].reason


def test_script_logging_only_to_its_file_is_not_a_hang(tmp_path, fake_track):
    # 2400 steps of 5 ms log to the file only for longer than the 8 s watchdog (which must outlast the silent start)
    _, runs, _ = campaign(tmp_path, fake_track, n=1, env={"FAKE_MODE": "logonly", "SPEEDRUN_NUM_ITERATIONS": "2400"},
                          hang_timeout_s=8.0)
    assert runs[0].status == "ok", runs[0].reason


def test_schedule_with_unknown_arm_is_refused(tmp_path):
    arm = make_arm(str(FAKE), name="main")
    with pytest.raises(HarnessError, match="unknown arms"):
        run_campaign(tmp_path / "c", [arm], ["main", "other"], telemetry=False)


def test_env_pairs():
    assert parse_env_pairs(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
    for bad in ("A", "=1", "1A=2", "A B=1"):
        with pytest.raises(HarnessError):
            parse_env_pairs([bad])


def _wait_for(pred, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _start_campaign(out, runs, *env_pairs):
    """`speedrun run` of the fake track as a separate process, to be signalled by the test."""
    cmd = [sys.executable, "-m", "harness", "run", str(FAKE), "--runs", str(runs), "--out", str(out), "--quiet",
           "--no-telemetry"]
    for pair in env_pairs:
        cmd += ["--env", pair]
    return subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)


def test_ctrl_c_keeps_everything_and_resume_finishes(tmp_path):
    out = tmp_path / "camp"
    proc = _start_campaign(out, 3, "SPEEDRUN_NUM_ITERATIONS=300")
    # Interrupt during the second run, once the first has finished.
    assert _wait_for(lambda: (out / "runs" / "1" / "output.txt").exists()), "second run never started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    camp = json.loads((out / "campaign.json").read_text())
    assert camp["status"] == "interrupted"
    first = json.loads((out / "runs" / "0" / "run.json").read_text())
    assert first["status"] == "ok"
    assert json.loads((out / "runs" / "1" / "run.json").read_text())["status"] == "interrupted"

    r = run_cli("run", "--resume", out, "--quiet", "--no-telemetry")
    # every run ok; the fake's seeds 0-2 (3.2770, 3.2776, 3.2782) give p=0.0101: verdict FAIL, exit 4
    assert r.returncode == 4, r.stderr
    runs = load_runs(out)
    assert [x.status for x in runs] == ["ok"] * 3
    assert runs[0].started_unix == first["started_unix"]  # not redone
    kept = list((out / "runs").glob("1.interrupted-*"))
    assert len(kept) == 1 and (kept[0] / "output.txt").exists()  # the interrupted attempt is kept aside
    assert json.loads((out / "campaign.json").read_text())["status"] == "complete"
    again = run_cli("run", "--resume", out)
    assert again.returncode == 2 and "already complete" in again.stderr


@pytest.mark.parametrize("args,msg", [
    (["run", "no-such-track"], "unknown track"),
    (["run", "--resume", "/nonexistent/campaign"], "no such campaign folder"),
    (["run", str(FAKE), "--env", "NOEQUALS"], "--env takes KEY=VALUE"),
    (["run"], "name a track"),
    (["run", str(FAKE), "--script", "/nonexistent.py"], "not found"),
    (["run", str(FAKE), "--runs", "0"], "expected at least 1"),
    (["run", "--resume", "/tmp", "--env", "A=1", "--nproc", "2"], "drop --nproc, --env"),
    (["run", "--resume", "/tmp", "--until-significant"], "drop --until-significant"),
])
def test_cli_bad_input_is_one_clear_line(args, msg):
    r = run_cli(*args)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_out_folder_holding_a_campaign_is_not_overwritten(tmp_path):
    out = tmp_path / "c"
    r = run_cli("run", str(FAKE), "--runs", "1", "--out", out, "--quiet", "--no-telemetry")
    assert r.returncode == 4, r.stderr  # one run: no p-value, so the verdict is FAIL
    before = (out / "campaign.json").read_text()
    r2 = run_cli("run", str(FAKE), "--runs", "1", "--out", out, "--quiet")
    assert r2.returncode == 2 and "already holds a campaign" in r2.stderr
    assert (out / "campaign.json").read_text() == before


def test_failed_runs_give_a_distinct_exit_code(tmp_path):
    r = run_cli("run", str(FAKE), "--runs", "1", "--out", tmp_path / "c", "--quiet", "--no-telemetry",
                "--env", "FAKE_MODE=crash")
    assert r.returncode == 3
    assert "failed" in r.stdout
    (run,) = load_runs(tmp_path / "c")
    assert run.reason.startswith("exited with code 1: RuntimeError: simulated crash")


def test_printed_block_pastes_back_as_python(tmp_path):
    # The console summary must not wrap the block at the terminal width: contributors paste it.
    r = run_cli("run", str(FAKE), "--runs", "3", "--out", tmp_path / "c", "--quiet", "--no-telemetry",
                env={"COLUMNS": "60"})
    assert r.returncode == 4, r.stderr  # all ok; the fake's 3 seeds give p=0.0101, a FAIL at alpha 0.01
    code = r.stdout.split("```")[1]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})
    assert buf.getvalue().splitlines() == [ln[2:] for ln in code.splitlines() if ln.startswith("# ")]


def test_sigterm_stops_the_run_and_marks_the_campaign_interrupted(tmp_path):
    out = tmp_path / "camp"
    proc = _start_campaign(out, 2, "FAKE_MODE=hang")
    log = out / "runs" / "0" / "output.txt"
    assert _wait_for(lambda: log.exists() and "about to hang" in log.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert json.loads((out / "campaign.json").read_text())["status"] == "interrupted"
    pid = int(log.read_text().split("about to hang pid=")[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_written_files_are_readable_by_others(tmp_path):
    from harness.fsio import write_json_atomic

    p = write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("extra, message", [
    ('alpha = "abc"', "'alpha' must be float"),
    ('final_step = "ten"', "'final_step' must be int"),
    ('env = ["a"]', "[env] must be a table"),
    ('[pins]\ngpu_count = "8x"', "[pins] gpu_count must be a whole number"),
])
def test_malformed_track_toml_is_one_error_line(tmp_path, extra, message):
    folder = tmp_path / "trk"
    folder.mkdir()
    (folder / "train.py").write_text("print('step:1/1 val_loss:1.0 train_time:1ms')\n")
    (folder / "track.toml").write_text(f'name = "trk"\nscript = "train.py"\nnproc = 1\ntarget = 1.0\n{extra}\n')
    r = run_cli("env", "--check", folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {folder / 'track.toml'}: {message}")


@pytest.mark.parametrize("content", ['{"status": "interrupted"}', "[1, 2]", b"\xff\xfe{}"])
def test_malformed_campaign_json_is_one_error_line_for_report_and_resume(tmp_path, content):
    (tmp_path / "runs").mkdir()
    path = tmp_path / "campaign.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for args in (("report", tmp_path), ("run", "--resume", tmp_path, "--quiet")):
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"error: {path}: ")
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # left as it was


def test_a_step_line_read_from_stdout_and_from_the_log_counts_once():
    from harness.campaign import RunProgress

    progress = RunProgress()
    line = "step:5/5 val_loss:1.2345 train_time:100ms step_avg:20.00ms"
    progress.feed(line + "\n")  # from the run's stdout
    first = (progress.first_step_unix, progress.last_step_unix, progress.final_step_unix)
    time.sleep(0.02)
    progress.feed(line)  # the same line, later, from the log the script also writes
    assert (progress.first_step_unix, progress.last_step_unix, progress.final_step_unix) == first
    progress.feed("step:5/5 val_loss:1.2345 train_time:101ms step_avg:20.20ms")  # a different line still counts
    assert progress.last_step_unix > first[1]


def test_compile_watch_counts_only_a_silent_run_and_at_most_every_check_period(tmp_path):
    from harness.campaign import COMPILE_CHECK_S, RunProgress
    from harness.commands.progress import LiveDisplay

    cache = tmp_path / "cache"
    (cache / "triton").mkdir(parents=True)
    progress = RunProgress(compile_files=0)
    t = progress.last_output + 1.0
    (cache / "triton" / "a.so").write_text("x")
    progress.watch_compile(cache, t)  # output 1 s ago: not silent, not counted
    assert progress.compile_files == 0 and progress.last_compile_unix is None
    t = progress.last_output + COMPILE_CHECK_S + 1
    progress.watch_compile(cache, t)
    assert progress.compile_files == 1 and progress.last_compile_unix == t and progress.last_activity() == t
    (cache / "triton" / "b.so").write_text("x")
    progress.watch_compile(cache, t + 1)  # within the check period: not counted again
    assert progress.compile_files == 1
    progress.watch_compile(cache, t + COMPILE_CHECK_S)
    assert progress.compile_files == 2 and progress.last_compile_unix == t + COMPILE_CHECK_S
    progress.watch_compile(cache, t + 3 * COMPILE_CHECK_S)  # no new file: the last sign of life stays put
    assert progress.last_activity() == t + COMPILE_CHECK_S
    display = LiveDisplay(1, quiet=True)
    display.run_start(0, "main")
    display.run_progress(progress)
    assert "compiling: 2 cache files" in display.progress.tasks[-1].fields["info"]
