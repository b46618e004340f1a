"""Nothing lost, nothing fooled (issue 15): faults injected into real campaigns (kill -9, signals, a second
harness, a full disk, torchrun ranks in their own sessions) and hostile input (markup in a run's output, a
hand-broken campaign.json, nan in stats, raw bytes). Marked `fault` or `hostile`; the closing note counts them."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, run_cli, sigint_as_in_a_terminal
from harness.campaign import make_arm, run_campaign
from harness.results import load_runs

FAKE = FIXTURES / "fake_track"
# Every run finished; 4 when one or two runs of the fake track do not make the claim (not the point here).
ALL_RUNS_FINISHED = (0, 4)

# A training script of our own in the log protocol. When TEST_FLAG names a file that exists, run
# TEST_RUN (default 0) first does `{active}` (the fault under test); without the flag it is a normal run.
SCRIPT = '''\
import os, signal, sys, time, uuid
os.makedirs("logs", exist_ok=True)
logfile = f"logs/{{uuid.uuid4()}}.txt"
def log(s, console=True):
    with open(logfile, "a") as f:
        print(s, file=f)
    if console:
        print(s, flush=True)
log(open(sys.argv[0]).read(), console=False)
log("=" * 100, console=False)
flag = os.environ.get("TEST_FLAG", "")
active = bool(flag) and os.path.exists(flag) and os.environ.get("SPEEDRUN_RUN_INDEX") == os.environ.get("TEST_RUN", "0")
seed = int(os.environ["SPEEDRUN_SEED"])
if active:
{active}
for step in range(21):
    if step % 10 == 0:
        log(f"step:{{step}}/20 val_loss:{{3.2770 + 0.0003 * (seed % 5) + (20 - step) * 0.01:.4f}} train_time:{{step * 10}}ms step_avg:10.00ms")
    else:
        log(f"step:{{step}}/20 train_time:{{step * 10}}ms step_avg:10.00ms")
{after}
'''


def make_script(tmp_path: Path, active: str = "pass", after: str = "") -> Path:
    body = "\n".join("    " + line for line in active.splitlines())
    path = tmp_path / "train_test.py"
    path.write_text(SCRIPT.format(active=body, after=after))
    return path


def start_harness(*args, env=None) -> subprocess.Popen:
    full = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="400", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)


def wait_for(pred, timeout=60.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def read_pid(path: Path) -> int:
    assert wait_for(lambda: path.exists() and path.read_text().strip()), f"{path} never written"
    return int(path.read_text())


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: "), line
    return line


def no_tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


# ---------------------------------------------------------------------------------------------------------
# 1. Run output is never rendered as markup


@pytest.mark.hostile
@pytest.mark.parametrize("last_line", ["[/bold] x", "[link=http://evil.example][green]ok[/green]"])
def test_markup_in_a_runs_output_is_shown_literally(tmp_path, last_line):
    script = make_script(tmp_path, after=f"print({last_line!r}, flush=True)\nsys.exit(1)")
    out = tmp_path / "c"
    r = run_cli("run", FAKE, "--script", script, "--runs", "1", "--out", out, "--no-telemetry",
                env={"COLUMNS": "400"})
    assert r.returncode == 3, r.stderr  # the run failed (exit 1); the campaign itself finished
    assert "Traceback" not in r.stderr + r.stdout
    assert last_line in r.stderr  # the live display's line for the failed run
    assert last_line in r.stdout  # the summary table's reason cell
    assert json.loads((out / "campaign.json").read_text())["status"] == "complete"
    rep = run_cli("report", out, env={"COLUMNS": "400"})
    assert rep.returncode == 0 and last_line in rep.stdout and "Traceback" not in rep.stderr


@pytest.mark.hostile
def test_markup_in_a_campaign_folder_name_is_shown_literally(tmp_path):
    out = tmp_path / "c[bold]am[link=http:evil.example]p"  # a file name cannot hold a closing tag's "/"
    r = run_cli("run", FAKE, "--runs", "1", "--out", out, "--no-telemetry", env={"COLUMNS": "400"})
    assert r.returncode in ALL_RUNS_FINISHED, r.stderr
    assert f"campaign {out.name} (complete)" in r.stdout  # the table's title, as text


@pytest.mark.hostile
def test_markup_in_a_track_toml_pin_is_shown_literally(tmp_path):
    folder = tmp_path / "trk"
    folder.mkdir()
    (folder / "train.py").write_text("print('step:1/1 val_loss:1.0 train_time:1ms')\n")
    (folder / "track.toml").write_text('name = "trk"\nscript = "train.py"\nnproc = 1\ntarget = 1.0\n'
                                       '[pins]\ntorch = "[/bold]9.9[link=http://evil.example]"\n')
    r = run_cli("env", "--check", folder, env={"COLUMNS": "400"})
    assert r.returncode == 1, r.stderr  # not record-grade: the pin does not match
    assert "Traceback" not in r.stderr and "[/bold]9.9[link=http://evil.example]" in r.stdout


# ---------------------------------------------------------------------------------------------------------
# 2. One owner per campaign folder


@pytest.mark.fault
def test_a_second_harness_on_a_live_campaign_is_refused(tmp_path):
    flag = tmp_path / "hold"
    flag.write_text("")
    # run 0 keeps logging to its file (alive, not hung) until the flag goes away
    script = make_script(tmp_path, active=f"while os.path.exists({str(flag)!r}):\n"
                                          "    log('waiting', console=False)\n    time.sleep(0.1)")
    out = tmp_path / "c"
    owner = start_harness("run", FAKE, "--script", script, "--runs", "2", "--out", out, "--quiet",
                          "--no-telemetry", "--env", f"TEST_FLAG={flag}")
    try:
        assert wait_for(lambda: list((out / "runs" / "0").glob("logs/*.txt")))
        for args in (("run", "--resume", out, "--quiet", "--no-telemetry"),
                     ("run", FAKE, "--runs", "1", "--out", out, "--quiet", "--no-telemetry"),
                     ("report", out)):
            r = run_cli(*args)
            assert r.returncode == 2, (args, r.stderr)
            line = one_error_line(r.stderr)
            assert f"in use by another speedrun (pid {owner.pid} on " in line, line
        assert not list((out / "runs").glob("0.interrupted-*"))  # the live run was not moved aside
    finally:
        flag.unlink()
    _, err = owner.communicate(timeout=120)
    assert owner.returncode in ALL_RUNS_FINISHED, err
    assert [r.status for r in load_runs(out)] == ["ok", "ok"]


# ---------------------------------------------------------------------------------------------------------
# 3. Every process of a run is found and ended


@pytest.mark.fault
def test_resume_ends_what_a_killed_harness_left_running(tmp_path):
    flag = tmp_path / "hold"
    flag.write_text("")
    # logs only to its file (never to the harness's pipe), forever
    script = make_script(tmp_path, active="open('pid', 'w').write(str(os.getpid()))\n"
                                          "while True:\n    log('working', console=False)\n    time.sleep(0.1)")
    out = tmp_path / "c"
    harness = start_harness("run", FAKE, "--script", script, "--runs", "2", "--out", out, "--quiet",
                            "--no-telemetry", "--env", f"TEST_FLAG={flag}")
    child = read_pid(out / "runs" / "0" / "pid")
    harness.kill()  # kill -9: no clean-up of any kind
    harness.communicate(timeout=30)
    time.sleep(0.3)
    assert alive(child)  # the run outlived its harness
    flag.unlink()  # the resumed runs are normal ones
    r = run_cli("run", "--resume", out, "--quiet", "--no-telemetry")
    assert r.returncode in ALL_RUNS_FINISHED, r.stderr
    assert not alive(child)
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("resume: ended")]
    assert str(child) in line.split("(pid ")[1]  # torchrun and the script, K=1 included
    assert [x.status for x in load_runs(out)] == ["ok", "ok"]


@pytest.mark.fault
def test_a_second_ctrl_c_does_not_skip_the_final_kill(tmp_path):
    flag = tmp_path / "on"
    flag.write_text("")
    # ignores SIGTERM, keeps printing: only SIGKILL after the grace period ends it
    script = make_script(tmp_path, active="signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                          "open('pid', 'w').write(str(os.getpid()))\n"
                                          "while True:\n    print('alive', flush=True)\n    time.sleep(0.1)")
    out = tmp_path / "c"
    harness = start_harness("run", FAKE, "--script", script, "--runs", "1", "--out", out, "--quiet",
                            "--no-telemetry", "--env", f"TEST_FLAG={flag}", env={"SPEEDRUN_KILL_GRACE_S": "2"})
    child = read_pid(out / "runs" / "0" / "pid")
    harness.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert alive(child)  # still in its grace period
    harness.send_signal(signal.SIGINT)  # impatient user
    _, err = harness.communicate(timeout=60)
    assert harness.returncode == 130, err
    assert "Traceback" not in err
    assert not alive(child)
    assert json.loads((out / "campaign.json").read_text())["status"] == "interrupted"
    assert json.loads((out / "runs" / "0" / "run.json").read_text())["status"] == "interrupted"


TORCHRUN_RANKS = '''\
import os, signal, sys, time
try:
    os.setsid()  # what some launchers do: each rank in a session of its own, out of the run's process group
except OSError:
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a rank stuck in a collective does not answer SIGTERM
import torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
open(f"rank{rank}.pid", "w").write(str(os.getpid()))
dist.barrier()
print(f"rank {rank} hangs", flush=True)
time.sleep(3600)
'''


@pytest.mark.fault
def test_torchrun_ranks_in_their_own_sessions_are_ended(tmp_path):
    pytest.importorskip("torch.distributed")
    track = tmp_path / "ranks_track"  # the fake track with time for torch to import on a busy machine
    track.mkdir()
    toml = (FAKE / "track.toml").read_text().replace("hang_timeout_s = 3", "hang_timeout_s = 300")
    (track / "track.toml").write_text(toml.replace('"train_fake.py"', '"train_ranks.py"'))
    (track / "train_ranks.py").write_text(TORCHRUN_RANKS)
    out = tmp_path / "c"
    harness = start_harness("run", track, "--nproc", "2", "--runs", "1", "--out", out,
                            "--quiet", "--no-telemetry", "--env", "OMP_NUM_THREADS=1",
                            env={"SPEEDRUN_KILL_GRACE_S": "1"})
    pids = [read_pid(out / "runs" / "0" / f"rank{r}.pid") for r in range(2)]
    assert wait_for(lambda: (out / "runs" / "0" / "output.txt").read_bytes().count(b"hangs") == 2)
    harness.send_signal(signal.SIGINT)  # the same clean-up as for a hung or timed-out run
    _, err = harness.communicate(timeout=60)
    assert harness.returncode == 130, err
    assert not any(alive(p) for p in pids)


# ---------------------------------------------------------------------------------------------------------
# 4. A full disk


FLOOD = "open('pid', 'w').write(str(os.getpid()))\nwhile True:\n    print('x' * 65536, flush=True)"


@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MiB filesystem (tmpfs), where this test may mount one (root in a namespace that allows it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the /dev/full variant runs everywhere)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of folder's filesystem."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


@pytest.mark.fault
def test_a_full_disk_stops_at_once_and_the_campaign_resumes(tmp_path, small_disk):
    flag = tmp_path / "flood"
    flag.write_text("")
    script = make_script(tmp_path, active=FLOOD)
    out = small_disk / "c"
    r = run_cli("run", FAKE, "--script", script, "--runs", "3", "--out", out, "--quiet", "--no-telemetry",
                "--env", f"TEST_FLAG={flag}", "--env", "TEST_RUN=1", timeout=120)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert "no space left on device" in line and "--resume" in line
    assert not alive(int((out / "runs" / "1" / "pid").read_text()))
    camp = json.loads((out / "campaign.json").read_text())
    assert camp["status"] == "interrupted"
    first = (out / "runs" / "0" / "run.json").read_bytes()
    assert json.loads(first)["status"] == "ok"
    assert not no_tmp_files(out)
    # any other command on the full disk: one line too
    filler = _fill(small_disk)
    rep = run_cli("report", out)
    assert rep.returncode == 2 and "no space left on device" in one_error_line(rep.stderr)
    assert not no_tmp_files(out)
    filler.unlink()
    (out / "runs" / "1" / "output.txt").unlink()
    flag.unlink()
    again = run_cli("run", "--resume", out, "--quiet", "--no-telemetry")
    assert again.returncode in ALL_RUNS_FINISHED, again.stderr
    assert (out / "runs" / "0" / "run.json").read_bytes() == first  # nothing finished was touched
    assert [x.status for x in load_runs(out)] == ["ok"] * 3


@pytest.mark.fault
def test_a_run_whose_writes_get_enospc_is_interrupted_not_failed(tmp_path):
    # Runs everywhere: the script's own log write goes to /dev/full, which answers ENOSPC like a full disk.
    flag = tmp_path / "full"
    flag.write_text("")
    script = make_script(tmp_path, active="logfile = '/dev/full'\nlog('step:0/20 train_time:0ms')")
    out = tmp_path / "c"
    r = run_cli("run", FAKE, "--script", script, "--runs", "2", "--out", out, "--quiet", "--no-telemetry",
                "--env", f"TEST_FLAG={flag}", "--env", "TEST_RUN=1")
    assert r.returncode == 2, r.stderr
    assert "no space left on device" in one_error_line(r.stderr)
    assert json.loads((out / "campaign.json").read_text())["status"] == "interrupted"
    assert json.loads((out / "runs" / "1" / "run.json").read_text())["status"] == "interrupted"
    first = (out / "runs" / "0" / "run.json").read_bytes()
    flag.unlink()
    again = run_cli("run", "--resume", out, "--quiet", "--no-telemetry")
    assert again.returncode in ALL_RUNS_FINISHED, again.stderr
    assert (out / "runs" / "0" / "run.json").read_bytes() == first
    assert [x.status for x in load_runs(out)] == ["ok", "ok"]


@pytest.mark.fault
def test_the_harness_own_output_write_getting_enospc_is_one_line(tmp_path, monkeypatch, capsys):
    # Runs everywhere: output.txt is opened on /dev/full, so the harness's own write gets a real ENOSPC.
    import builtins

    import harness.campaign as campaign_module
    from harness.cli import main

    def open_on_full_disk(path, mode="r", *args, **kw):
        return builtins.open("/dev/full" if mode == "wb" else path, mode, *args, **kw)

    monkeypatch.setattr(campaign_module, "open", open_on_full_disk, raising=False)
    out = tmp_path / "c"
    assert main(["run", str(FAKE), "--runs", "2", "--out", str(out), "--quiet", "--no-telemetry"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no space left on device" in line
    assert json.loads((out / "campaign.json").read_text())["status"] == "interrupted"
    assert not (out / ".space-reserve").exists() and not no_tmp_files(out)


# ---------------------------------------------------------------------------------------------------------
# 6. plan: bounded work, right answers at both extremes


def _power(n, effect, alpha=0.01):
    import scipy.stats

    return float(scipy.stats.nct.cdf(scipy.stats.t.ppf(alpha, n - 1), n - 1, effect * math.sqrt(n)))


@pytest.mark.hostile
def test_plan_with_a_tiny_effect_does_bounded_work(monkeypatch):
    import scipy.stats

    import harness.plan as plan
    import harness.sequential as sequential

    calls, sims = [], []
    real_cdf, real_sim = scipy.stats.nct.cdf, sequential.simulate_sequential

    def counting_cdf(*a, **kw):
        calls.append(1)
        assert len(calls) <= 200, "fixed-N search does unbounded work"
        return real_cdf(*a, **kw)

    def recording_sim(mean, sigma, target, n_sims, max_runs, **kw):
        sims.append((n_sims, max_runs, kw.get("chunk", 20000)))
        assert n_sims * max_runs * (max_runs + 400) <= 1.01 * plan.SIM_WORK, "simulation work unbounded"
        return real_sim(mean, sigma, target, n_sims, max_runs, **kw)

    monkeypatch.setattr(scipy.stats.nct, "cdf", counting_cdf)
    monkeypatch.setattr(sequential, "simulate_sequential", recording_sim)
    p = plan.make_plan(0.94, 0.01, 0.938)
    ((n_sims, max_runs, chunk),) = sims
    assert chunk * max_runs <= plan.SIM_CHUNK_CELLS  # memory per chunk
    monkeypatch.setattr(scipy.stats.nct, "cdf", real_cdf)
    assert _power(p.fixed_runs, p.effect) >= 0.9 > _power(p.fixed_runs - 1, p.effect)
    tiny = plan.make_plan(1.0, 1.0, 1.0 - 1e-10)
    assert tiny.fixed_runs is None and "more than 1000000000 runs" in plan.plan_text(tiny)


@pytest.mark.hostile
@pytest.mark.parametrize("sigma", [1e-9, 1e-320])
def test_plan_with_a_huge_effect_says_two_runs(sigma):
    from harness.plan import make_plan, plan_text

    p = make_plan(3.28, sigma, 3.0)
    assert p.fixed_runs == 2 and "2 runs for 90% power" in plan_text(p)
    assert p.seq_power > 0.99  # every run is far below the target: the sequential test decides too


# ---------------------------------------------------------------------------------------------------------
# 7. Bad input: one error line; the run's bytes kept exactly


@pytest.mark.hostile
@pytest.mark.parametrize("args", [
    ["--losses", "nan,3.27", "--times", "1,2"],
    ["--losses", "3.27,3.26", "--times", "inf,2"],
    ["--losses", "3.27,-inf", "--times", "1,2"],
    ["--losses", "3.27,3.26", "--times", "1,2", "--target", "nan"],
    ["--losses", "3.27,1e39", "--times", "1,2"],
    ["--losses", ",", "--times", "1"],
])
def test_stats_refuses_what_the_block_cannot_hold(args):
    full = ["stats", "--target", "3.28", *args] if "--target" not in args else ["stats", *args]
    r = run_cli(*full)
    assert r.returncode == 2, r.stdout
    one_error_line(r.stderr)
    assert r.stdout == ""


@pytest.mark.hostile
def test_stats_block_of_extreme_but_finite_numbers_is_valid_python():
    r = run_cli("stats", "--target", "3.28", "--losses", "1e30,-2.5e-300,3.27", "--times", "0.0001,1e20,-3")
    assert r.returncode == 0, r.stderr
    compile(r.stdout, "<block>", "exec")
    assert "nan" not in r.stdout.split("print(")[0] and "inf" not in r.stdout.split("print(")[0]


def _finished_campaign(tmp_path) -> Path:
    out = tmp_path / "c"
    r = run_cli("run", FAKE, "--runs", "2", "--out", out, "--quiet", "--no-telemetry")
    assert r.returncode in ALL_RUNS_FINISHED, r.stderr
    return out


@pytest.mark.hostile
def test_resume_of_a_hand_broken_campaign_json_is_one_error_line(tmp_path):
    out = _finished_campaign(tmp_path)
    good = json.loads((out / "campaign.json").read_text())
    good["status"] = "interrupted"
    arm = good["arms"]["main"]
    broken = {
        "empty arms": {**good, "arms": {}},
        "arm without keys": {**good, "arms": {"main": {}}},
        "arm not an object": {**good, "arms": {"main": 7}},
        "arm with a bad track": {**good, "arms": {"main": {**arm, "track": {"name": "x"}}}},
        "schedule naming no arm": {**good, "schedule": ["main", "ghost"]},
        "seeds not matching": {**good, "seeds": [0]},
        "until_significant without max_runs": {**good, "until_significant": {"kind": "one-sample"}},
    }
    for what, content in broken.items():
        (out / "campaign.json").write_text(json.dumps(content))
        r = run_cli("run", "--resume", out, "--quiet", "--no-telemetry")
        assert r.returncode == 2, (what, r.stderr)
        line = one_error_line(r.stderr)
        assert "cannot resume" in line or "campaign.json" in line, (what, line)


@pytest.mark.hostile
@pytest.mark.parametrize("command", [["run", str(FAKE), "--runs", "1"], ["compare", str(FAKE), str(FAKE), "--runs", "1"]])
def test_env_cannot_override_the_harness_seed(tmp_path, command):
    r = run_cli(*command, "--out", tmp_path / "c", "--quiet", "--no-telemetry", "--env", "SPEEDRUN_SEED=7")
    assert r.returncode == 2
    assert "--seed-base" in one_error_line(r.stderr)
    assert not (tmp_path / "c" / "campaign.json").exists()


@pytest.mark.hostile
def test_output_txt_holds_the_runs_bytes_exactly(tmp_path):
    raw = b"caf\xc3\xa9 \xff\xfe half \xe2\x82 nul \x00 end\r\n"
    script = make_script(tmp_path, after=f"sys.stdout.buffer.write({raw!r})\nsys.stdout.buffer.flush()")
    out = tmp_path / "c"
    r = run_cli("run", FAKE, "--script", script, "--runs", "1", "--out", out, "--quiet", "--no-telemetry")
    assert r.returncode in ALL_RUNS_FINISHED, r.stderr
    data = (out / "runs" / "0" / "output.txt").read_bytes()
    assert data.endswith(raw)
    assert data.split(b"\n", 1)[1].startswith(b"step:0/20 val_loss:")  # after the harness's header line only


@pytest.mark.fault
def test_stale_tmp_files_of_killed_writes_are_removed_when_a_campaign_is_opened(tmp_path):
    out = _finished_campaign(tmp_path)
    stale = [out / ".campaign.json.k3j_9xq2.tmp", out / "runs" / "0" / ".run.json.abcd1234.tmp",
             out / ".record.md.zz00yy11.tmp"]
    kept = [out / "notes.tmp", out / ".keep.tmp", out / "runs" / "0" / "logs" / ".run.json.abcd1234.tmp"]
    for p in stale + kept:
        p.write_text("half-written")
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)  # not of the harness's naming, or not where the harness writes


@pytest.mark.fault
def test_a_write_killed_midway_leaves_the_old_file_and_no_tmp(tmp_path):
    from harness.fsio import write_bytes_atomic

    target = tmp_path / "x.json"
    target.write_text('{"old": true}\n')
    # the writer is killed while writing a large payload through a slow pipe of its own
    code = ("import sys; from harness.fsio import write_bytes_atomic\n"
            "import harness.fsio as f, os\n"
            "real = os.fsync\n"
            "def slow(fd):\n    print('writing', flush=True); import time; time.sleep(60)\n"
            "os.fsync = slow\n"
            f"write_bytes_atomic({str(target)!r}, b'x' * 1000)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert target.read_text() == '{"old": true}\n'
    leftovers = no_tmp_files(tmp_path)
    assert len(leftovers) == 1  # what kill -9 leaves; the next owner removes it
    from harness.fsio import remove_stale_tmp

    assert remove_stale_tmp(tmp_path) == leftovers and not no_tmp_files(tmp_path)
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
