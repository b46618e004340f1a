"""The harness's compile cache: its key, the environment every run gets, cold/warm detection, Triton autotune
results read from Triton 3.6's on-disk files, and export/import with every refusal."""

import hashlib
import io
import json
import shutil
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import FIXTURES, REPO, run_cli
from harness import compile_cache as cc
from harness.campaign import make_arm, run_campaign, run_environment
from harness.errors import HarnessError
from harness.record_md import write_record
from harness.results import load_runs
from harness.tracks import load_track

FAKE = FIXTURES / "fake_track"
PROBE = FIXTURES / "compile_cache" / "probe" / "train_probe.py"
TINY_WRAPPER = FIXTURES / "compile_cache" / "tiny_wrapper" / "train_gpt.py"
IDENTITY = {"gpu": "NVIDIA H200", "driver": "580.159.04", "arch": "x86_64", "cuda": "13.0",
            "torch": "2.11.0+cu130", "triton": "3.6.0", "python": "3.12.3"}


@pytest.fixture
def root(tmp_path, monkeypatch):
    d = tmp_path / "cache-root"
    monkeypatch.setenv("SPEEDRUN_CACHE_DIR", str(d))
    monkeypatch.delenv("SPEEDRUN_NO_CACHE", raising=False)
    return d


def probe_arm(name="main", env=None):
    return make_arm(str(PROBE), name=name, default_track=load_track(FAKE), env=env or {})


# ---------------------------------------------------------------------------------------------------------
# The key


def _track_arm(tmp_path, nproc=1):
    folder = tmp_path / "track"
    folder.mkdir(exist_ok=True)
    (folder / "train_gpt.py").write_text("print('train')\n")
    (folder / "triton_configs.json").write_text("{}\n")
    track = SimpleNamespace(folder=folder, script=folder / "train_gpt.py",
                            frozen={"train_gpt.py": "x", "triton_configs.json": "y"}, env={})
    return SimpleNamespace(name="main", track=track, script=folder / "train_gpt.py", nproc=nproc, env={})


def _digest(arm, identity=IDENTITY):
    return cc.cache_for_arm(arm, {"SPEEDRUN_CACHE_DIR": "/tmp/x"}, identity=identity).digest


@pytest.mark.parametrize("field", cc.NODE_FIELDS)
def test_every_node_field_changes_the_key(tmp_path, field):
    arm = _track_arm(tmp_path)
    assert _digest(arm, {**IDENTITY, field: "something else"}) != _digest(arm)


def test_gpu_count_and_every_frozen_file_change_the_key(tmp_path):
    arm = _track_arm(tmp_path)
    base = _digest(arm)
    assert _digest(replace_nproc(arm, 2)) != base
    (arm.track.folder / "triton_configs.json").write_text('{"H200": {}}\n')  # a frozen file besides the script
    changed = _digest(arm)
    assert changed != base
    (arm.script).write_text("print('train, changed')\n")
    assert _digest(arm) not in (base, changed)


def replace_nproc(arm, n):
    return SimpleNamespace(**{**vars(arm), "nproc": n})


def test_a_script_arm_is_keyed_by_the_script_and_the_python_files_beside_it(tmp_path):
    folder = tmp_path / "record"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("import triton_kernels\n")
    (folder / "triton_kernels.py").write_text("# kernels v1\n")
    (folder / "notes.txt").write_text("a\n")
    track = SimpleNamespace(folder=tmp_path, script=tmp_path / "other.py", frozen={"other.py": "x"}, env={})
    arm = SimpleNamespace(name="main", track=track, script=folder / "train_gpt.py", nproc=1, env={})
    assert sorted(cc.arm_code_files(arm)) == ["train_gpt.py", "triton_kernels.py"]
    base = _digest(arm)
    (folder / "notes.txt").write_text("b\n")
    assert _digest(arm) == base  # not code
    (folder / "triton_kernels.py").write_text("# kernels v2\n")
    assert _digest(arm) != base
    # The same bytes elsewhere share the cache (torch's caches do not key on paths).
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.glob("*.py"):
        (copy / p.name).write_bytes(p.read_bytes())
    assert _digest(SimpleNamespace(**{**vars(arm), "script": copy / "train_gpt.py"})) == _digest(arm)


def test_cache_root_default_override_and_opt_out():
    assert cc.cache_root({}) == cc.DEFAULT_ROOT == REPO / "cache" / "compile"
    assert cc.cache_root({"SPEEDRUN_CACHE_DIR": "/tmp/somewhere"}) == Path("/tmp/somewhere")
    assert cc.cache_root({"SPEEDRUN_CACHE_DIR": "/tmp/x", "SPEEDRUN_NO_CACHE": "1"}) is None
    assert cc.cache_root({"SPEEDRUN_NO_CACHE": "0"}) == cc.DEFAULT_ROOT


def test_the_default_root_is_ignored_by_git():
    text = (REPO / ".gitignore").read_text()
    assert "/cache/" in text.splitlines()


# ---------------------------------------------------------------------------------------------------------
# The environment of runs


def test_run_environment_points_every_compile_cache_at_the_key_folder(root, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_COMPILE_CACHE_STATE", "warm")  # left by an outer harness: must not leak
    arm = probe_arm()
    env = run_environment(arm, 0, 0, "test")
    folder = cc.cache_for_arm(arm).dir
    assert folder.parent == root and (folder / "key.json").is_file()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(folder / "triton")
    assert env["TRITON_CACHE_AUTOTUNING"] == "1"
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    for name in cc.CACHE_VARIABLES:
        assert name in env
        if name.endswith(("_DIR", "_PATH")):
            assert Path(env[name]).is_relative_to(folder), name
    assert env["SPEEDRUN_COMPILE_CACHE_STATE"] == "cold"
    key = json.loads((folder / "key.json").read_text())
    assert key["digest"] == folder.name and key["key"]["nproc"] == 1


def test_no_cache_leaves_the_environment_alone(root, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_NO_CACHE", "1")
    monkeypatch.setenv("SPEEDRUN_COMPILE_CACHE", "/stale")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    env = run_environment(probe_arm(), 0, 0, "test")
    assert "TRITON_CACHE_DIR" not in env and "SPEEDRUN_COMPILE_CACHE" not in env
    assert not root.exists()


def test_a_folder_whose_key_json_names_another_key_is_refused(root):
    arm = probe_arm()
    cache = cc.cache_for_arm(arm)
    cc.prepare(cache)
    stored = json.loads((cache.dir / "key.json").read_text())
    stored["key"]["torch"] = "0.0"
    (cache.dir / "key.json").write_text(json.dumps(stored))
    with pytest.raises(HarnessError, match="not the key of this folder"):
        run_environment(arm, 0, 0, "test")


@pytest.mark.slow
def test_a_run_of_the_tiny_track_under_the_harness_sees_the_variables(root, tmp_path):
    arm = make_arm(str(TINY_WRAPPER), name="main", default_track=load_track("tiny"),
                   env={"SPEEDRUN_NUM_ITERATIONS": "20", "SPEEDRUN_VAL_EVERY": "10"})
    out = run_campaign(tmp_path / "c", [arm], ["main"], telemetry=False, on_finish=write_record)
    seen = json.loads((out / "runs" / "0" / "cache_env.json").read_text())
    folder = cc.cache_for_arm(arm).dir
    assert cc.run_variables(cc.cache_for_arm(arm)).items() <= seen.items()
    assert seen["TRITON_CACHE_DIR"] == str(folder / "triton") and seen["TRITON_CACHE_AUTOTUNING"] == "1"
    (run,) = load_runs(out)
    assert run.final_step == 20 and run.compile_cache["state"] == "cold"


# ---------------------------------------------------------------------------------------------------------
# Cold and warm runs, compile time, autotune configs in campaign.json, run.json and record.md


def test_run_one_is_cold_and_runs_two_to_n_are_warm(root, tmp_path):
    arm = probe_arm()
    out = run_campaign(tmp_path / "c1", [arm], ["main"] * 3, telemetry=False, on_finish=write_record)
    runs = load_runs(out)
    assert [r.compile_cache["state"] for r in runs] == ["cold", "warm", "warm"]
    assert runs[0].compile_cache["entries_before"] == 0 and runs[0].compile_cache["entries_after"] == 1
    assert [json.loads((out / "runs" / str(k) / "cache_env.json").read_text())["SPEEDRUN_COMPILE_CACHE_STATE"]
            for k in range(3)] == ["cold", "warm", "warm"]
    # The probe "compiles" for 0.5 s with a cold cache before its first step line (train_time:0ms).
    assert runs[0].compile_warmup_s >= 0.5
    assert all(r.compile_warmup_s is not None and r.compile_warmup_s >= 0 for r in runs)
    # A later campaign on the node starts warm.
    (again,) = load_runs(run_campaign(tmp_path / "c2", [arm], ["main"], telemetry=False, on_finish=write_record))
    assert again.compile_cache["state"] == "warm"

    camp = json.loads((out / "campaign.json").read_text())
    assert camp["compile_cache"]["main"]["digest"] == runs[0].compile_cache["digest"]
    (entry,) = camp["triton_autotune"]["main"]["probe_kernel"]
    assert entry["config"] == {"kwargs": {"BLOCK": 128}, "num_warps": 8, "num_ctas": 1, "num_stages": 3}
    assert entry["key"] == [1024, 768, "torch.bfloat16"] and entry["configs_tried"] == 3

    md = (out / "record.md").read_text()
    table = md[md.index("## Runs"):md.index("## Compile cache")]
    assert "compile + warm-up (s)" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| 0 ") or ln.startswith("| 1 ")]
    assert "| cold |" in rows[0] and "| warm |" in rows[1]
    assert f"{runs[0].compile_warmup_s:.1f}" in rows[0]
    assert "| main | probe_kernel | [1024, 768, 'torch.bfloat16'] | BLOCK=128, num_warps=8" in md


def test_the_console_summary_shows_compile_time_and_cold_or_warm(root, tmp_path):
    out = tmp_path / "c"
    r = run_cli("run", str(FAKE), "--script", str(PROBE), "--runs", "2", "--out", out, "--quiet", "--no-telemetry",
                env={"COLUMNS": "200", "SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode in (0, 4), r.stderr  # 4: the probe's losses miss the target
    runs = load_runs(out)
    assert f"{runs[0].compile_warmup_s:.1f} cold" in r.stdout
    assert f"{runs[1].compile_warmup_s:.1f} warm" in r.stdout


def test_no_cache_flag_runs_without_the_harness_cache(root, tmp_path):
    out = tmp_path / "c"
    r = run_cli("run", str(FAKE), "--script", str(PROBE), "--runs", "1", "--out", out, "--quiet", "--no-telemetry",
                "--no-cache", env={"SPEEDRUN_CACHE_DIR": str(root), "TRITON_CACHE_DIR": str(tmp_path / "own")})
    assert r.returncode in (0, 4), r.stderr  # 4: the probe's losses miss the target
    (run,) = load_runs(out)
    assert run.compile_cache == {"enabled": False, "state": None}
    seen = json.loads((out / "runs" / "0" / "cache_env.json").read_text())
    assert seen["TRITON_CACHE_DIR"] == str(tmp_path / "own") and "TRITON_CACHE_AUTOTUNING" not in seen
    assert not root.exists()
    assert "| off |" in (out / "record.md").read_text()


def test_cache_dir_flag_moves_the_root(root, tmp_path):
    other = tmp_path / "elsewhere"
    r = run_cli("run", str(FAKE), "--script", str(PROBE), "--runs", "1", "--out", tmp_path / "c", "--quiet",
                "--no-telemetry", "--cache-dir", other, env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode in (0, 4), r.stderr  # 4: the probe's losses miss the target
    (folder,) = [p for p in other.iterdir()]
    assert (folder / "triton").is_dir() and not root.exists()


def test_a_run_interrupted_after_its_compile_keeps_its_compile_time(root, tmp_path):
    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(FAKE), "--script", str(PROBE), "--runs", "2",
                             "--out", str(out), "--quiet", "--no-telemetry", "--env", "PROBE_HANG=1"],
                            env=dict(os.environ, PYTHONPATH=str(REPO), SPEEDRUN_CACHE_DIR=str(root)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "runs" / "0" / "output.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "probe hangs" in log.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    (run,) = load_runs(out)
    assert run.status == "interrupted" and run.compile_cache["state"] == "cold"
    assert run.compile_warmup_s >= 0.5  # the probe's cold "compile"
    assert f"| {run.compile_warmup_s:.1f} | cold |" in (out / "record.md").read_text()


def test_compile_warmup_counts_to_the_start_of_the_timed_part():
    assert cc.compile_warmup_s(100.0, 142.5, 0.0) == 42.5
    assert cc.compile_warmup_s(100.0, 142.5, 1500.0) == 41.0  # the first line already carries 1.5 s of training
    assert cc.compile_warmup_s(100.0, None, None) is None


# ---------------------------------------------------------------------------------------------------------
# Triton autotune files (Triton 3.6: <TRITON_CACHE_DIR>/<base32 sha256>/<kernel>.autotune.json)


def write_autotune(triton_dir: Path, kernel: str, key, rows, folder: str | None = None) -> Path:
    folder = folder or hashlib.sha256(f"{kernel}{key}".encode()).hexdigest()[:52].upper()
    path = triton_dir / folder / f"{kernel}.autotune.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "configs_timings": rows}))
    return path


def config(block_m, block_n, warps, stages):
    return {"kwargs": {"BLOCK_SIZE_M": block_m, "BLOCK_SIZE_N": block_n, "GROUP_SIZE_M": 8}, "num_warps": warps,
            "num_ctas": 1, "num_stages": stages, "maxnreg": None, "pre_hook": None, "ir_override": None}


def test_autotune_configs_pick_what_triton_picks(tmp_path):
    t = tmp_path / "triton"
    # [median, p20, p80] timings: the smallest median wins; equal medians go to p20; the first of equal ones.
    write_autotune(t, "XXT_kernel", [768, 768, 768, 1, 768, 1, "torch.bfloat16", "torch.bfloat16"], [
        [config(64, 64, 4, 3), [0.0310, 0.0300, 0.0330]],
        [config(128, 64, 8, 3), [0.0250, 0.0245, 0.0260]],
        [config(128, 128, 8, 4), [0.0250, 0.0240, 0.0270]],
        [config(64, 128, 4, 4), [0.0250, 0.0240, 0.0270]],
    ])
    # A second tuning key of the same kernel (another shape), written as later Triton does (key as strings).
    write_autotune(t, "XXT_kernel", ["3072", "768", "768", "1", "768", "1", "torch.bfloat16", "torch.bfloat16"], [
        [config(64, 64, 4, 3), [0.0710, 0.0700, 0.0730]],
        [config(128, 128, 8, 3), [0.0690, 0.0680, 0.0700]],
    ])
    write_autotune(t, "ba_plus_cAA_kernel", [768, 768, "torch.bfloat16"], [[config(64, 64, 4, 3), 0.02],
                                                                           [config(128, 64, 4, 3), 0.015]])
    found = cc.autotune_configs(t)
    assert sorted(found) == ["XXT_kernel", "ba_plus_cAA_kernel"]
    by_key = {str(e["key"]): e for e in found["XXT_kernel"]}
    first = by_key[str([768, 768, 768, 1, 768, 1, "torch.bfloat16", "torch.bfloat16"])]
    assert first["config"]["kwargs"] == {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 128, "GROUP_SIZE_M": 8}
    assert first["config"]["num_stages"] == 4 and "pre_hook" not in first["config"]
    assert first["timing"] == [0.0250, 0.0240, 0.0270] and first["configs_tried"] == 4
    second = [e for e in found["XXT_kernel"] if e is not first][0]
    assert second["config"]["kwargs"]["BLOCK_SIZE_M"] == 128 and second["config"]["num_warps"] == 8
    assert found["ba_plus_cAA_kernel"][0]["config"]["kwargs"]["BLOCK_SIZE_M"] == 128
    assert cc.describe_config(first["config"]).startswith("BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, GROUP_SIZE_M=8, ")


def test_a_damaged_autotune_file_is_named_not_fatal(tmp_path):
    t = tmp_path / "triton"
    bad = t / "ABC" / "broken_kernel.autotune.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    write_autotune(t, "odd_kernel", [1], [[config(64, 64, 4, 3), "fast"]])
    found = cc.autotune_configs(t)
    assert "unreadable" in found["broken_kernel"][0]["problem"]
    assert "not a number" in found["odd_kernel"][0]["problem"]
    assert cc.autotune_configs(tmp_path / "missing") == {}


# ---------------------------------------------------------------------------------------------------------
# Export and import


def filled_cache(root: Path, arm=None, files=None) -> Path:
    cache = cc.cache_for_arm(arm or probe_arm(), {"SPEEDRUN_CACHE_DIR": str(root)})
    d = cc.prepare(cache)
    for rel, data in (files or {"inductor/fxgraph/ab/entry": b"graph" * 100, "triton/HASH/k.cubin": b"\x7fELF" * 50,
                                "triton/HASH/k.json": b'{"name": "k"}'}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    (d / "triton" / "tmp.pid_1_x").mkdir(parents=True, exist_ok=True)  # Triton's half-written files: not exported
    (d / "triton" / "tmp.pid_1_x" / "partial").write_bytes(b"half")
    return d


def tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_export_import_round_trip(root, tmp_path):
    d = filled_cache(root)
    archive = tmp_path / "cache.tar.xz"
    r = run_cli("cache", "export", "--out", archive, env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0, r.stderr
    assert "exported 1 cache folder(s), 4 files" in r.stdout
    fresh = tmp_path / "fresh-node"
    r = run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)})
    assert r.returncode == 0, r.stderr
    expected = {k: v for k, v in tree(d).items() if "tmp.pid_" not in k}
    assert tree(fresh / d.name) == expected
    assert [p.name for p in fresh.iterdir()] == [d.name]  # no staging folder left behind
    # A run on the fresh node starts warm from the imported folder.
    state = cc.environment_for_run(probe_arm(), {"SPEEDRUN_CACHE_DIR": str(fresh)})["SPEEDRUN_COMPILE_CACHE_STATE"]
    assert state == "warm"
    # Importing again adds nothing and keeps what is there.
    r = run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)})
    assert r.returncode == 0 and "0 new files" in r.stdout


def test_export_finds_copies_that_lie_megabytes_apart(root, tmp_path):
    # A real cache holds near-copies of the same kernels far apart in the tar (on the H200, the reference's lean
    # cache packed to 16.3 MiB with xz preset 1's 1 MiB window and to 4.5 MiB with a window over the whole tar).
    # Here: the same 3 MiB of random bytes twice, with 3 MiB of other random bytes between them.
    blob = random.Random(0).randbytes(3 << 20)
    other = random.Random(1).randbytes(3 << 20)
    d = filled_cache(root, files={"triton/A/k.cubin": blob, "triton/B/k.cubin": other, "triton/C/k.cubin": blob})
    archive = tmp_path / "cache.tar.xz"
    r = run_cli("cache", "export", "--out", archive, env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0, r.stderr
    assert archive.stat().st_size < 6.5 * 2**20  # a 1 MiB window stores the blob twice: over 9 MiB
    fresh = tmp_path / "fresh-node"
    r = run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)})
    assert r.returncode == 0, r.stderr
    assert (fresh / d.name / "triton" / "C" / "k.cubin").read_bytes() == blob


def test_lean_export_leaves_out_tritons_intermediate_ir_only(root, tmp_path):
    files = {"triton/HASH/k.ttir": b"ir", "triton/HASH/k.ttgir": b"ir", "triton/HASH/k.llir": b"ir",
             "triton/HASH/k.ptx": b"ptx", "triton/HASH/k.source": b"src", "triton/HASH/k.cubin": b"\x7fELF",
             "triton/HASH/k.json": b"{}", "triton/HASH/__grp__k.json": b"{}", "triton/AT/k.autotune.json": b"{}",
             "inductor/fxgraph/x/entry": b"graph", "inductor/ab/cabc.py": b"code", "inductor/ab/k.ptx": b"kept"}
    d = filled_cache(root, files=files)
    env = {"SPEEDRUN_CACHE_DIR": str(root)}
    listing = run_cli("cache", "list", env=env)
    assert "triton " in listing.stdout and "(of which Triton IR) 0.0 MiB" in listing.stdout
    archive = tmp_path / "lean.tar.xz"
    assert run_cli("cache", "export", "--lean", "--out", archive, env=env).returncode == 0
    fresh = tmp_path / "fresh"
    assert run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)}).returncode == 0
    got = set(tree(fresh / d.name))
    assert got == {"key.json", "triton/HASH/k.cubin", "triton/HASH/k.json", "triton/HASH/__grp__k.json",
                   "triton/AT/k.autotune.json", "inductor/fxgraph/x/entry", "inductor/ab/cabc.py", "inductor/ab/k.ptx"}


def test_split_export_imports_from_its_parts_in_any_order(root, tmp_path):
    rng = random.Random(7)
    d = filled_cache(root, files={"triton/H/big.cubin": rng.randbytes(40000)})  # incompressible: several parts
    out = tmp_path / "parts" / "cache.tar.xz"
    r = run_cli("cache", "export", "--out", out, "--part-size", "16K", env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0, r.stderr
    parts = sorted(out.parent.glob("cache.tar.xz.*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= 16 * 1024 for p in parts)
    shuffled = parts[:]
    random.Random(1).shuffle(shuffled)
    fresh = tmp_path / "fresh"
    r = run_cli("cache", "import", *shuffled, env={"SPEEDRUN_CACHE_DIR": str(fresh)})
    assert r.returncode == 0, r.stderr
    assert tree(fresh / d.name)["triton/H/big.cubin"] == tree(d)["triton/H/big.cubin"]

    # A smaller export under the same name removes the parts the old one had beyond its own.
    (d / "triton" / "H" / "big.cubin").write_bytes(b"small")
    r = run_cli("cache", "export", "--out", out, "--part-size", "16K", env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0 and sorted(out.parent.glob("cache.tar.xz.*")) == [out.parent / "cache.tar.xz.001"]


def _one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_missing_damaged_or_mixed_parts_are_refused(root, tmp_path):
    rng = random.Random(3)
    filled_cache(root, files={"triton/H/big.cubin": rng.randbytes(30000)})
    a, b = tmp_path / "a" / "c.tar.xz", tmp_path / "b" / "c.tar.xz"
    for out in (a, b):
        assert run_cli("cache", "export", "--out", out, "--part-size", "12K",
                       env={"SPEEDRUN_CACHE_DIR": str(root)}).returncode == 0
        time.sleep(1.1)  # another creation time in the manifest: another archive
    parts_a = sorted(a.parent.glob("c.tar.xz.*"))
    fresh = {"SPEEDRUN_CACHE_DIR": str(tmp_path / "fresh")}
    assert "missing" in _one_error_line(run_cli("cache", "import", *parts_a[:-1], env=fresh))
    mixed = [parts_a[0]] + sorted(b.parent.glob("c.tar.xz.*"))[1:]
    assert "another export" in _one_error_line(run_cli("cache", "import", *mixed, env=fresh))
    damaged = tmp_path / "damaged.001"
    data = bytearray(parts_a[1].read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert "damaged" in _one_error_line(run_cli("cache", "import", parts_a[0], damaged, *parts_a[2:], env=fresh))
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def _archive_with(members, identity=None, entries=None, first=None):
    """A hand-built archive: a manifest (ours, for this node unless told) and then the given TarInfo members."""
    identity = identity or cc.node_identity()
    key = cc.make_key(identity, "0" * 64, 1)
    digest = cc.key_digest(key)
    manifest = {"format": cc.ARCHIVE_FORMAT, "kind": cc.ARCHIVE_KIND, "created_unix": 0,
                "node": {f: identity.get(f) for f in cc.NODE_FIELDS},
                "entries": entries if entries is not None else {digest: {"key": key, "about": {}}}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for info, data in ([first] if first else [(tarfile.TarInfo(cc.MANIFEST), json.dumps(manifest).encode())]):
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        key_json = json.dumps({"format": 1, "digest": digest, "key": key, "about": {}}).encode()
        info = tarfile.TarInfo(f"{digest}/key.json")
        info.size = len(key_json)
        tf.addfile(info, io.BytesIO(key_json))
        for make in members:
            info, data = make(digest)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"x"):
    return lambda digest: (tarfile.TarInfo(name.format(d=digest)), data)


def _special(name, kind, linkname=""):
    def make(digest):
        info = tarfile.TarInfo(name.format(d=digest))
        info.type, info.linkname = kind, linkname
        return info, None
    return make


@pytest.mark.parametrize("member,message", [
    (_file("/etc/evil"), "absolute"),
    (_file("{d}/../../evil"), "'..'"),
    (_file("elsewhere/file"), "outside the cache folders"),
    (_special("{d}/link", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
    (_special("{d}/hard", tarfile.LNKTYPE, "{d}/key.json"), "a link"),
    (_special("{d}/dev", tarfile.CHRTYPE), "not a regular file"),
    (_special("{d}/fifo", tarfile.FIFOTYPE), "not a regular file"),
])
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, member, message):
    archive = tmp_path / "evil.tar.xz"
    archive.write_bytes(_archive_with([_file("{d}/inductor/ok", b"fine"), member]))
    fresh = tmp_path / "fresh"
    line = _one_error_line(run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)}))
    assert "unsafe archive member" in line and message in line
    assert list(fresh.iterdir()) == []  # the staging folder is gone, no cache folder appeared
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("field,word", [("gpu", "foreign"), ("driver", "foreign"), ("torch", "stale"),
                                        ("triton", "stale"), ("cuda", "stale"), ("python", "stale")])
def test_foreign_or_stale_archives_are_refused(tmp_path, field, word):
    other = {**cc.node_identity(), field: "9.9.9-other"}
    archive = tmp_path / "other.tar.xz"
    archive.write_bytes(_archive_with([_file("{d}/inductor/entry")], identity=other))
    fresh = tmp_path / "fresh"
    line = _one_error_line(run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)}))
    assert f"refusing a {word}" in line and field in line and "9.9.9-other" in line
    assert list(fresh.iterdir()) == []


def test_an_entry_that_does_not_match_its_key_or_a_foreign_file_is_refused(tmp_path):
    identity = cc.node_identity()
    key = cc.make_key(identity, "1" * 64, 1)
    archive = tmp_path / "wrong.tar.xz"
    archive.write_bytes(_archive_with([], entries={"0123456789abcdef": {"key": key}}))
    env = {"SPEEDRUN_CACHE_DIR": str(tmp_path / "fresh")}
    assert "does not match its key" in _one_error_line(run_cli("cache", "import", archive, env=env))
    stale_key = {**cc.make_key(identity, "1" * 64, 1), "torch": "1.0"}
    archive.write_bytes(_archive_with([], entries={cc.key_digest(stale_key): {"key": stale_key}}))
    assert "made elsewhere" in _one_error_line(run_cli("cache", "import", archive, env=env))
    not_ours = tmp_path / "plain.tar.xz"
    not_ours.write_bytes(_archive_with([], first=(tarfile.TarInfo("README"), b"hello")))
    assert "not a speedrun compile-cache archive" in _one_error_line(run_cli("cache", "import", not_ours, env=env))
    garbage = tmp_path / "garbage.tar.xz"
    garbage.write_bytes(b"not an archive at all")
    assert "not a readable xz tar archive" in _one_error_line(run_cli("cache", "import", garbage, env=env))
    assert "no such file" in _one_error_line(run_cli("cache", "import", tmp_path / "absent.tar.xz", env=env))


def test_export_skips_folders_of_other_environments_and_list_names_them(root, tmp_path):
    mine = filled_cache(root)
    other_arm = probe_arm()
    other = cc.CompileCache(root=root, key={**cc.cache_for_arm(other_arm).key, "torch": "1.0"}, about={})
    cc.prepare(other)
    (other.dir / "inductor").mkdir()
    (other.dir / "inductor" / "x").write_bytes(b"old")
    env = {"SPEEDRUN_CACHE_DIR": str(root)}
    listing = run_cli("cache", "list", env=env)
    assert listing.returncode == 0
    line_mine = next(ln for ln in listing.stdout.splitlines() if ln.startswith(mine.name))
    line_other = next(ln for ln in listing.stdout.splitlines() if ln.startswith(other.digest))
    assert "this node" in line_mine and "train_probe.py" in line_mine
    assert "other environment" in line_other and "torch '1.0'" in line_other
    r = run_cli("cache", "export", "--out", tmp_path / "a.tar.xz", env=env)
    assert r.returncode == 0 and f"skipped {other.digest}" in r.stdout and "exported 1 cache folder(s)" in r.stdout
    empty = {"SPEEDRUN_CACHE_DIR": str(tmp_path / "empty")}
    assert "no filled compile cache" in _one_error_line(run_cli("cache", "export", env=empty))


def second_script_cache(root: Path, code_sha256: str, script: str, graph: bytes) -> cc.CompileCache:
    """A second filled folder beside filled_cache's: another script's key on this node, one inductor file."""
    cache = cc.CompileCache(root=root, key={**cc.cache_for_arm(probe_arm()).key, "code_sha256": code_sha256},
                            about={"script": script})
    cc.prepare(cache)
    (cache.dir / "inductor").mkdir()
    (cache.dir / "inductor" / "graph").write_bytes(graph)
    return cache


def test_export_only_takes_the_folders_of_the_keys_given(root, tmp_path):
    """One archive per script: `--only KEY` (a prefix of the name `cache list` prints) exports that folder alone;
    a key that names no folder is one error line and writes no archive."""
    mine = filled_cache(root)
    second = second_script_cache(root, "1" * 64, "other.py", b"other graph")
    env = {"SPEEDRUN_CACHE_DIR": str(root)}
    archive = tmp_path / "one.tar.xz"
    r = run_cli("cache", "export", "--only", second.digest[:8], "--out", archive, env=env)
    assert r.returncode == 0, r.stderr
    assert "exported 1 cache folder(s), 2 files" in r.stdout  # its key.json and the graph
    fresh = tmp_path / "fresh"
    assert run_cli("cache", "import", archive, env={"SPEEDRUN_CACHE_DIR": str(fresh)}).returncode == 0
    assert sorted(p.name for p in fresh.iterdir()) == [second.digest]
    assert (fresh / second.digest / "inductor" / "graph").read_bytes() == b"other graph"
    both = run_cli("cache", "export", "--only", mine.name, "--only", second.digest, "--out", tmp_path / "b.tar.xz",
                   env=env)
    assert both.returncode == 0 and "exported 2 cache folder(s)" in both.stdout
    missing = tmp_path / "none.tar.xz"
    line = _one_error_line(run_cli("cache", "export", "--only", "ffffffff", "--out", missing, env=env))
    assert "--only ffffffff" in line and not missing.exists()
    assert "--only " in _one_error_line(run_cli("cache", "export", "--only", "", "--out", missing, env=env))


def test_import_only_unpacks_the_archives_folders_of_the_keys_given(root, tmp_path):
    """`cache import --only KEY` takes one script's folder from an archive of several (the previous record's, so the
    candidate's compile stays cold); a key the archive lacks is one error line naming what it holds, nothing
    written."""
    mine = filled_cache(root)
    second = second_script_cache(root, "2" * 64, "record.py", b"record graph")
    archive = tmp_path / "both.tar.xz"
    r = run_cli("cache", "export", "--out", archive, env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0 and "exported 2 cache folder(s)" in r.stdout, r.stdout + r.stderr
    fresh = tmp_path / "fresh"
    r = run_cli("cache", "import", archive, "--only", second.digest[:8], env={"SPEEDRUN_CACHE_DIR": str(fresh)})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in fresh.iterdir()) == [second.digest]
    assert f"imported {second.digest} ('record.py'" in r.stdout and mine.name not in r.stdout
    other = tmp_path / "other"
    line = _one_error_line(run_cli("cache", "import", archive, "--only", "ffffffff",
                                   env={"SPEEDRUN_CACHE_DIR": str(other)}))
    assert "--only ffffffff" in line and mine.name in line and second.digest in line
    assert not other.exists() or list(other.iterdir()) == []


@pytest.mark.parametrize("text,value", [("15M", 15 * 2**20), ("15MiB", 15 * 2**20), ("500k", 500 * 1024),
                                        ("1G", 2**30), ("65536", 65536)])
def test_part_sizes(text, value):
    assert cc.parse_size(text) == value


def test_bad_part_size_is_one_error_line(root, tmp_path):
    filled_cache(root)
    r = run_cli("cache", "export", "--part-size", "fifteen", env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert "--part-size" in _one_error_line(r)


def test_record_md_names_the_warm_runs_that_still_compiled(tmp_path):
    """From the H200 campaigns: a warm reference run added 256 files to its cache (kernels that miss every run);
    the line names it, and neither a cold run (which fills the cache) nor a warm run that added nothing does."""
    from harness.record_md import record_markdown
    results = Path(__file__).resolve().parent.parent / "results" / "short"
    warm = record_markdown(results / "2026-12-01-h200-ref-warm-import")
    assert "warm runs that still added files to it (compiled again): run 0 (+256 files)" in warm
    cold = record_markdown(results / "2026-12-01-h200-ref-cold")
    assert "cold" in cold and "still added files" not in cold
    copy = tmp_path / "c"
    shutil.copytree(results / "2026-12-01-h200-ref-warm-import", copy)
    run_json = copy / "runs" / "0" / "run.json"
    run = json.loads(run_json.read_text())
    run["compile_cache"]["entries_after"] = run["compile_cache"]["entries_before"]
    run_json.write_text(json.dumps(run))
    assert "still added files" not in record_markdown(copy)


def test_export_says_when_the_folders_last_run_still_added_files(root, tmp_path):
    """On the H200 the seed-001 record's code added 256 files in the first warm run after its cold one (none in
    the second): an archive exported after the cold run made every importing node compile those again."""
    arm = probe_arm()
    (run,) = load_runs(run_campaign(tmp_path / "c1", [arm], ["main"], telemetry=False, on_finish=write_record))
    folder = Path(run.compile_cache["dir"])
    assert [(r["state"], r["entries_before"], r["entries_after"]) for r in cc.folder_runs(folder)] == [("cold", 0, 1)]
    assert cc.count_entries(folder) == 1  # runs.json is the harness's note, not an entry
    archive = tmp_path / "after-cold.tar.xz"
    r = run_cli("cache", "export", "--out", archive, env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0, r.stderr
    assert f"note: {folder.name}: its last run (cold) still added 1 file(s)" in r.stdout
    with tarfile.open(archive) as tf:
        assert not [n for n in tf.getnames() if n.endswith(cc.RUNS_FILE)]  # another node's history stays here
    run_campaign(tmp_path / "c2", [arm], ["main"], telemetry=False, on_finish=write_record)
    assert [r["state"] for r in cc.folder_runs(folder)] == ["cold", "warm"]
    r = run_cli("cache", "export", "--out", tmp_path / "after-warm.tar.xz", env={"SPEEDRUN_CACHE_DIR": str(root)})
    assert r.returncode == 0 and "note:" not in r.stdout
    (folder / cc.RUNS_FILE).write_text("{not json")  # a damaged note is no history, not an error
    assert cc.folder_runs(folder) == [] and cc.export_note(folder) is None
