"""`speedrun profile`: the in-process hook (harness/profile_hook/sitecustomize.py) opens the PyTorch profiler on a
script's own step lines, the command runs real campaigns of the tiny track through torchrun and writes profile.md;
malformed profile files and hostile kernel names are handled as data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_module, run_cli
from harness.errors import HarnessError
from harness.profiles import Kernel, Profile, kind_of, kinds_side_by_side, load_profile, profile_markdown

HOOK = REPO / "harness" / "profile_hook"
TINY = REPO / "tracks" / "tiny" / "train_gpt.py"
SHORT_RUN = {"SPEEDRUN_NUM_ITERATIONS": "8", "SPEEDRUN_VAL_EVERY": "4"}


def _env_args(env: dict) -> list[str]:
    return [a for k, v in env.items() for a in ("--env", f"{k}={v}")]


@pytest.fixture(scope="module")
def two_arm_profile(tmp_path_factory):
    """One real two-arm profile of the tiny track (the track, and its script as a script arm): steps 4 and 5."""
    out = tmp_path_factory.mktemp("profile") / "campaign"
    r = run_cli("profile", "tiny", TINY, "--step", 3, "--steps", 2, "--out", out, "--quiet", "--no-telemetry",
                *_env_args(SHORT_RUN), timeout=600)
    return out, r


def test_a_two_arm_profile_covers_the_asked_steps_and_writes_profile_md(two_arm_profile):
    out, r = two_arm_profile
    assert r.returncode == 0, r.stdout + r.stderr
    for k in (0, 1):
        doc = json.loads((out / "runs" / str(k) / "profile" / "kernels.json").read_text())
        assert (doc["first_step"], doc["last_step"], doc["steps"], doc["device"]) == (4, 5, 2, "cpu")
        names = {row["name"] for row in doc["kernels"]}
        assert "aten::mm" in names  # the model's matmuls ran inside the window
        assert (out / "runs" / str(k) / "profile" / "trace.json.gz").stat().st_size > 0
        assert load_profile(out / "runs" / str(k)).steps == 2
    md = (out / "profile.md").read_text()
    assert "| matmul |" in md and "difference (ms/step)" in md and "## baseline: longest 15" in md
    # the runs' own outcome: the tiny track validates at steps 0, 4, 8, and the losses are the ones run.json holds
    for k, arm in ((0, "baseline"), (1, "candidate")):
        run = json.loads((out / "runs" / str(k) / "run.json").read_text())
        curve = ", ".join(f"{s}: {v:.4f}" for s, v in run["val_curve"])
        assert [s for s, _ in run["val_curve"]] == [0, 4, 8]
        assert f"| {k} | {arm} | ok | 8 | {curve} |" in md
    campaign = json.loads((out / "campaign.json").read_text())
    assert campaign["profile"] == {"step": 3, "steps": 2, "arms": {"baseline": "tiny", "candidate": str(TINY)}}
    assert not (out / "record.md").exists()  # a profiled run is no timing result
    assert "device time per profiled step (ms)" in r.stdout


def test_a_step_past_the_end_of_the_run_says_so_and_exits_1(tmp_path):
    r = run_cli("profile", "tiny", "--step", 50, "--out", tmp_path / "c", "--quiet", "--no-telemetry",
                *_env_args(SHORT_RUN), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "never printed the step line step:50/" in r.stdout
    assert "its last step was 8" in r.stdout
    assert not (tmp_path / "c" / "profile.md").exists()


def test_a_bad_flag_is_one_line_and_exit_2(tmp_path):
    r = run_cli("profile", "tiny", "--step", 0, "--out", tmp_path / "c")
    assert r.returncode == 2 and "--step" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("profile", "tiny", "--out", tmp_path / "c")
    assert r.returncode == 2 and "--step" in r.stderr


def _run_hooked(script: str, env: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "s.py"
    path.write_text(script)
    full = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_PROFILE")}
    full.update({"PYTHONPATH": str(HOOK), "SPEEDRUN_PROFILE_DIR": str(tmp_path / "p"), **env})
    return subprocess.run([sys.executable, str(path)], env=full, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


STEPS_SCRIPT = """
import sys, torch
for step in range(1, 5):
    x = torch.randn(64, 64)
    for _ in range(step):  # step k runs k matmuls: the window's count says which steps it held
        x = x @ x
    sys.stdout.write(f"step:{step}/4 train")  # a step line written in two pieces
    print(f"_time:{step}ms step_avg:1.00ms", flush=True)
"""


def test_the_hook_profiles_exactly_the_steps_after_the_named_step_line(tmp_path):
    r = _run_hooked(STEPS_SCRIPT, {"SPEEDRUN_PROFILE_STEP": "1", "SPEEDRUN_PROFILE_STEPS": "2"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "step:4/4 train_time:4ms" in r.stdout  # the output passes through unchanged
    doc = json.loads((tmp_path / "p" / "kernels.json").read_text())
    assert (doc["first_step"], doc["last_step"]) == (2, 3)
    mm = next(row for row in doc["kernels"] if row["name"] == "aten::mm")
    assert mm["calls"] == 2 + 3


def test_a_run_ending_inside_the_window_still_writes_its_profile(tmp_path):
    r = _run_hooked(STEPS_SCRIPT, {"SPEEDRUN_PROFILE_STEP": "3", "SPEEDRUN_PROFILE_STEPS": "5"}, tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "p" / "kernels.json").read_text())
    assert (doc["first_step"], doc["last_step"], doc["steps"]) == (4, None, None)
    assert next(row for row in doc["kernels"] if row["name"] == "aten::mm")["calls"] == 4


@pytest.mark.parametrize("env", [{"SPEEDRUN_PROFILE_STEP": "1", "RANK": "1"},  # not rank 0
                                 {"SPEEDRUN_PROFILE_STEP": "one"},  # a hand-set bad value
                                 {}])  # not asked
def test_the_hook_does_nothing_where_it_is_not_asked(tmp_path, env):
    r = _run_hooked(STEPS_SCRIPT, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("step:") == 4
    assert not (tmp_path / "p").exists()


def test_the_wrapped_stdout_is_the_real_stream_for_everything_else(tmp_path):
    hook = load_module("profile_hook_under_test", HOOK / "sitecustomize.py")
    stream = io.StringIO()
    watch = hook.StepWatch(stream, start=5, steps=1, out_dir=str(tmp_path))
    text = "step:4/9 train_time:1ms\nno step here\n"
    assert watch.write(text) == len(text)
    assert watch.getvalue() == "step:4/9 train_time:1ms\nno step here\n"  # attributes reach the real stream
    assert watch._profiler is None  # step 4 is not the window's start (5)


def _profile(kernels, steps=2, device="cuda"):
    return Profile(device, 3, 2 + steps, steps, 1.0, tuple(kernels))


def test_kernels_are_sorted_into_kinds_by_their_names():
    assert kind_of("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT") == "matmul"
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1") == "matmul"
    assert kind_of("aten::mm") == "matmul"
    assert kind_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>") == "attention"
    assert kind_of("triton_tem_fused_0") == "Inductor template"
    assert kind_of("triton_poi_fused__to_copy_add_mul_0") == "Inductor pointwise"  # not a copy
    assert kind_of("triton_red_fused__to_copy_sum_1") == "Inductor reduction"
    assert kind_of("triton_per_fused_mean_pow_2") == "Inductor reduction"
    assert kind_of("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)") == "communication"
    assert kind_of("Memcpy HtoD (Pinned -> Device)") == "copy / fill"
    assert kind_of("_sym_mm_kernel") == "other"


def test_kinds_side_by_side_divide_by_steps_and_total_last():
    a = _profile([Kernel("nvjet_a", 4, 4000.0), Kernel("triton_poi_fused_add_0", 8, 1000.0)], steps=2)
    b = _profile([Kernel("nvjet_a", 4, 3000.0)], steps=1)
    rows = {r.kind: r.ms_per_step for r in kinds_side_by_side({"base": a, "cand": b})}
    assert rows["matmul"] == {"base": 2.0, "cand": 3.0}
    assert rows["Inductor pointwise"] == {"base": 0.5, "cand": 0.0}
    assert "attention" not in rows  # neither ran any
    assert list(rows)[-1] == "all kernels" and rows["all kernels"] == {"base": 2.5, "cand": 3.0}


def test_hostile_kernel_and_arm_names_are_data_in_profile_md():
    evil = "x|y`<script>alert(1)</script>\n| injected | row |"
    md = profile_markdown({"base|x": _profile([Kernel(evil, 1, 10.0)])}, {"base|x": "<b>tiny</b>"})
    assert "<b>" not in md and "| injected |" not in md and "base\\|x" in md
    table_lines = [line for line in md.splitlines() if "alert" in line]
    assert len(table_lines) == 1 and table_lines[0].count("`") == 2  # one code span, one table row
    before, code, after = table_lines[0].split("`")
    assert "<script>" in code and "<" not in before + after  # markup only inside the code span: shown, not run


def test_a_failed_runs_reason_in_profile_md_is_one_cell_of_text():
    from harness.results import Run
    from harness.profiles import profiled_runs_markdown
    run = Run(index=0, arm="main", seed=0, status="failed", reason="RuntimeError: <b>x</b> | y\nz", final_step=12)
    md = profiled_runs_markdown([run])
    row = [line for line in md.splitlines() if line.startswith("| 0 |")]
    assert len(row) == 1 and "<b>" not in row[0] and "\\|" in row[0]
    assert row[0].count(" | ") == 6 and "| 12 | - | - | - |" in row[0]  # seven cells; no curve, memory or compile


@pytest.mark.parametrize("doc, what", [
    ({"format": 2}, "format 2"),
    ({"format": 1, "device": "tpu"}, "'device'"),
    ({"format": 1, "device": "cuda", "first_step": 0}, "'first_step'"),
    ({"format": 1, "device": "cuda", "first_step": 3, "last_step": 4, "steps": 7}, "'last_step' and 'steps'"),
    ({"format": 1, "device": "cuda", "first_step": 3, "last_step": 4, "steps": 2, "window_s": float("nan"),
      "busy_us": 1}, "'window_s'"),
    ({"format": 1, "device": "cuda", "first_step": 3, "last_step": 4, "steps": 2, "window_s": 1, "busy_us": 1,
      "kernels": [{"name": 5, "calls": 1, "total_us": 1}]}, "kernel 0"),
    ({"format": 1, "device": "cuda", "first_step": 3, "last_step": 4, "steps": 2, "window_s": 1, "busy_us": 1,
      "kernels": [{"name": "k", "calls": True, "total_us": 1}]}, "kernel 0"),
])
def test_a_malformed_profile_file_is_one_error_naming_what_is_wrong(tmp_path, doc, what):
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "kernels.json").write_text(json.dumps(doc))
    with pytest.raises(HarnessError) as e:
        load_profile(tmp_path)
    assert what in str(e.value) and "kernels.json" in str(e.value)


def test_a_run_without_a_profile_reads_as_none_and_truncated_json_is_an_error(tmp_path):
    assert load_profile(tmp_path) is None
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "kernels.json").write_text('{"format": 1, "dev')
    with pytest.raises(HarnessError):
        load_profile(tmp_path)
