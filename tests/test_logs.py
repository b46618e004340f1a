"""The log parser against real record-log excerpts (tests/fixtures/logs/README.md) and hand-made variants."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.fsio import sha256_file
from harness.logs import SEPARATOR, check_monotonic, looks_like_log, parse_log, parse_log_file

FIX = Path(__file__).parent / "fixtures" / "logs"
VEFUSED = FIX / "record_2026-01-30_VeFused"
VEFUSED_0 = VEFUSED / "0ba09d92-4ef1-440f-85e3-9d2766294db4.txt"
LOG_2024 = FIX / "real_2024-11-06_ShortcutsTweaks_trimmed.txt"
LOG_2025 = FIX / "real_2025-08-23_SparseAttnGate_trimmed.txt"
MEDIUM_6DEC = FIX / "real_2025-11-12_medium_6decimals_tail.txt"

SMALL_HEADER = (
    "Running Python 3.12.7 (main, Oct  1 2024, 08:52:12) [GCC 11.4.0]\n"
    "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\n"
    "Running Triton version 3.6.0\n"
    "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |\n"
)
SMALL_BODY = (
    "step:0/3 val_loss:10.8311 train_time:0ms step_avg:0.03ms\n"
    "step:1/3 train_time:50ms step_avg:50.00ms\n"
    "step:2/3 train_time:100ms step_avg:50.00ms\n"
    "step:3/3 train_time:150ms step_avg:50.00ms\n"
    "step:3/3 val_loss:3.2775 train_time:160ms step_avg:53.33ms\n"
    "peak memory allocated: 30220 MiB reserved: 38672 MiB\n"
)


def print0_log(script: str, body: str = SMALL_BODY, header: str = SMALL_HEADER) -> str:
    """A log as the 2025+ scripts write it: print(code), print('='*100), header, print('='*100), body."""
    return script + "\n" + SEPARATOR + "\n" + header + SEPARATOR + "\n" + body


def fwrite_log(script: str, body: str = SMALL_BODY) -> str:
    """A log as the 2024 scripts write it: f.write('='*100+'\\n'); f.write(code); f.write('='*100+'\\n') ..."""
    smi_row = SMALL_HEADER.splitlines()[-1]
    header = "Running pytorch 2.5.1+cu124 compiled for CUDA 12.4\nnvidia-smi:\n" + smi_row + "\n\n"
    return SEPARATOR + "\n" + script + SEPARATOR + "\n" + header + SEPARATOR + "\n" + body


# --- the real 2026 record log ------------------------------------------------------------------------------


def test_real_2026_log_header_and_result():
    p = parse_log_file(VEFUSED_0)
    assert (p.python_version, p.torch_version, p.cuda_version, p.triton_version) == (
        "3.12.12", "2.10.0.dev20251210+cu126", "12.6", "3.6.0")
    assert p.driver_version == "560.35.03"
    assert p.gpus == ["NVIDIA H100 80GB HBM3"] * 8
    assert p.header[0].startswith("Running Python 3.12.12")
    assert p.reached_final and p.final_step == 1575 and p.total_steps == 1575
    assert p.final_val_loss == 3.2767 and p.final_val_loss_text == "3.2767"
    assert p.final_train_time_ms == 97825.0
    assert (p.peak_memory_allocated_mib, p.peak_memory_reserved_mib) == (30704, 46558)
    assert p.val_curve == [(0, 10.8284), (250, 4.5838), (1575, 3.2767)]
    assert p.steps[0].step_avg_ms == 0.03 and p.steps[0].train_loss is None
    # the three banner lines printed before step 0 are the competition's format, not problems
    assert p.unknown_lines == 0 and p.known_lines == 3
    assert p.problems == []
    assert check_monotonic(p) == []


def test_source_is_the_script_text_and_hashes_like_the_file(tmp_path):
    p = parse_log_file(VEFUSED_0)
    assert p.source.startswith("# Placeholder source written for this fixture.")
    assert p.source.endswith('ms")\n')  # the script's own final newline kept, print's newline dropped
    script = tmp_path / "train_gpt.py"
    script.write_bytes(p.source.encode("utf-8"))
    assert sha256_file(script) == p.source_sha256


@pytest.mark.parametrize("script", ["x = 1\nprint('hi')\n", "x = 1\nprint('hi')", "x = 1\n\n\n"])
def test_source_roundtrip_print0_layout(script):
    p = parse_log(print0_log(script))
    assert p.source == script
    assert p.source_sha256 == hashlib.sha256(script.encode()).hexdigest()
    assert p.final_val_loss == 3.2775 and p.reached_final


@pytest.mark.parametrize("script", ["x = 1\nprint('hi')\n", "é = 'ünïcode'\n"])
def test_source_roundtrip_2024_layout(script):
    p = parse_log(fwrite_log(script))
    assert p.source == script
    assert p.source_sha256 == hashlib.sha256(script.encode("utf-8")).hexdigest()
    assert p.torch_version == "2.5.1+cu124" and p.cuda_version == "12.4" and p.python_version is None


def test_source_with_separator_and_step_lines_is_not_parsed_as_log():
    script = (
        "banner = '''\n" + SEPARATOR + "\n'''\n"
        "doc = '''\nstep:9/9 val_loss:1.0000 train_time:5ms step_avg:1.00ms\n'''\n"
        "print(f\"step:{step}/{total} val_loss:{v:.4f} train_time:{t:.0f}ms\")\n"
    )
    for text in (print0_log(script), fwrite_log(script)):
        p = parse_log(text)
        assert p.source == script
        assert [s.step for s in p.steps] == [0, 1, 2, 3, 3]  # the step:9/9 line inside the source is not read
        assert p.final_val_loss == 3.2775
        assert p.gpus == ["NVIDIA H100 80GB HBM3"]


# --- 2024 and 2025 layouts -------------------------------------------------------------------------------


def test_real_2024_log_train_loss_nan_step_avg_and_timer_reset():
    p = parse_log_file(LOG_2024)
    assert p.torch_version == "2.5.1+cu124" and p.cuda_version == "12.4"
    assert p.python_version is None and p.triton_version is None
    assert p.gpus == ["NVIDIA H100 80GB HBM3"] * 8 and p.driver_version == "555.42.06"
    assert SEPARATOR in p.source and "step:1/3200" in p.source  # source lines kept, not parsed
    first = p.steps[0]
    assert (first.step, first.val_loss, first.train_time_ms) == (0, 10.8258, 327.0)
    assert math.isnan(first.step_avg_ms)
    assert p.steps[1].train_loss == 10.8258 and p.steps[1].val_loss is None
    assert p.final_val_loss == 3.3274 and p.final_train_time_ms == 452918.0
    assert p.peak_memory_allocated_mib is None  # 2024 logs print it to stdout only
    # train_time drops 14036ms -> 84ms at step 11: the 2024 warm-up exclusion, not a fault
    assert check_monotonic(p) == [] and p.problems == []
    assert any("warm-up" in n for n in p.notes)


def test_real_2025_log_source_without_trailing_newline():
    p = parse_log_file(LOG_2025)
    assert p.source.endswith("dist.destroy_process_group()")
    assert (p.python_version, p.torch_version, p.triton_version) == ("3.10.12", "2.9.0.dev20250713+cu126", "3.4.0")
    assert len(p.gpus) == 8
    assert p.final_val_loss == 3.2760 and p.final_train_time_ms == 168647.0
    assert (p.peak_memory_allocated_mib, p.peak_memory_reserved_mib) == (34761, 49140)
    assert p.val_curve[-3:] == [(1500, 3.3169), (1625, 3.2888), (1695, 3.2760)]
    assert p.problems == []  # a train line and a val line with the same step are the format


def test_medium_six_decimals_without_header():
    p = parse_log_file(MEDIUM_6DEC)
    assert p.source is None and p.source_sha256 is None and p.header == [] and p.gpus == []
    assert p.final_val_loss_text == "2.919649" and p.final_val_loss == 2.919649
    assert p.final_train_time_ms == 1496283.0 and p.final_step == 5960
    assert p.problems == []


def test_stdout_capture_with_debug_lines_and_old_peak_memory():
    p = parse_log_file(FIX / "variant_2024_stdout_debug.txt")
    assert p.source is None
    assert p.reached_final and p.final_val_loss == 4.987654 and p.final_train_time_ms == 3763.0
    assert p.peak_memory_allocated_mib == 31221 and p.peak_memory_reserved_mib is None
    # the device line, a DEBUG line, a torch warning; the two DataLoader lines are the 2024 scripts' format
    assert p.unknown_lines == 3 and p.known_lines == 2
    assert p.val_curve == [(0, 10.9562), (20, 5.901234), (40, 4.987654)]
    assert check_monotonic(p) == []


# --- broken logs -----------------------------------------------------------------------------------------


def test_cut_off_log():
    p = parse_log_file(FIX / "variant_cut_off.txt")
    assert not p.reached_final
    assert p.final_step is None and p.final_val_loss is None and p.final_train_time_ms is None
    assert p.total_steps == 1575 and p.steps[-1].step == 252
    cut = [s for s in p.problems if s.startswith("cut off")]
    assert len(cut) == 1 and "step:252/1575" in cut[0] and "'step:25'" in cut[0]


def test_nan_and_inf_losses_are_problems():
    p = parse_log_file(FIX / "variant_nan_val_loss.txt")
    assert p.reached_final and math.isnan(p.final_val_loss)
    assert p.nonfinite == ["step:10 val_loss:nan", "step:20 val_loss:nan"]
    assert any("non-finite" in s for s in p.problems)
    q = parse_log("step:1/1 train_loss:inf train_time:5ms step_avg:5.00ms\n"
                  "step:1/1 val_loss:inf train_time:6ms step_avg:6.00ms\n")
    assert q.final_val_loss == math.inf and len(q.nonfinite) == 2


def test_no_step_lines():
    p = parse_log("hello\nworld\n")
    assert p.steps == [] and not p.reached_final and p.total_steps is None
    assert any("no step lines" in s for s in p.problems)


def test_windows_line_endings_parse_the_same():
    text = VEFUSED_0.read_text()
    a, b = parse_log(text), parse_log(text.replace("\n", "\r\n"))
    assert b.source == a.source and b.source_sha256 == a.source_sha256
    assert (b.final_val_loss, b.final_train_time_ms, b.gpus, b.torch_version) == (
        a.final_val_loss, a.final_train_time_ms, a.gpus, a.torch_version)
    assert b.unknown_lines == a.unknown_lines and b.problems == a.problems


def test_several_final_lines_use_the_last_and_say_so():
    p = parse_log(SMALL_BODY + "step:3/3 val_loss:3.2800 train_time:170ms step_avg:56.67ms\n")
    assert p.final_val_loss == 3.28 and p.final_train_time_ms == 170.0
    assert any("2 final val_loss lines" in s for s in p.problems)


# --- monotonicity ----------------------------------------------------------------------------------------


def test_train_time_going_backwards_is_flagged():
    text = VEFUSED_0.read_text().replace("step:1570/1575 train_time:97313ms", "step:1570/1575 train_time:96000ms")
    p = parse_log(text)
    bad = check_monotonic(p)
    assert len(bad) == 1 and "train_time decreases at step 1570" in bad[0]
    assert bad[0] in p.problems and p.monotonic_problems == bad


def test_step_going_backwards_and_total_changing_are_flagged():
    body = ("step:1/10 train_time:5ms step_avg:5.00ms\nstep:3/10 train_time:9ms step_avg:3.00ms\n"
            "step:2/10 train_time:12ms step_avg:6.00ms\nstep:4/12 train_time:15ms step_avg:3.75ms\n")
    bad = check_monotonic(parse_log(body))
    assert any("step goes backwards (3 -> 2)" in s for s in bad)
    assert any("total steps change from 10 to 12" in s for s in bad)


def test_timer_reset_only_tolerated_in_warmup_with_nan_avg():
    reset_late = ("step:19/40 train_loss:6.0 train_time:21540ms step_avg:nanms\n"
                  "step:20/40 train_loss:5.9 train_time:83ms step_avg:nanms\n")
    assert check_monotonic(parse_log(reset_late))  # after step 11: flagged
    reset_numbered = ("step:10/40 train_loss:6.0 train_time:21540ms step_avg:nanms\n"
                      "step:11/40 train_loss:5.9 train_time:83ms step_avg:83.00ms\n")
    assert check_monotonic(parse_log(reset_numbered))  # a real average means the timer was running: flagged


# --- finding logs, reading files --------------------------------------------------------------------------


def test_looks_like_log():
    for f in (VEFUSED_0, LOG_2024, LOG_2025, MEDIUM_6DEC, FIX / "variant_cut_off.txt"):
        assert looks_like_log(f.read_text()), f
    assert not looks_like_log((VEFUSED / "README.md").read_text())
    assert not looks_like_log('print(f"step:{step}/{n} train_time:{t:.0f}ms")\n')
    assert not looks_like_log("")
    assert looks_like_log("step:5/10 train_time:12ms step_avg:2.40ms\r\n")


def test_parse_log_file_errors(tmp_path):
    with pytest.raises(HarnessError, match="no such file"):
        parse_log_file(tmp_path / "missing.txt")
    with pytest.raises(HarnessError, match="is a folder"):
        parse_log_file(tmp_path)
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00garbage")
    with pytest.raises(HarnessError, match="binary") as e:
        parse_log_file(binary)
    assert "\n" not in str(e.value)


def test_invalid_utf8_still_parses_with_a_problem(tmp_path):
    f = tmp_path / "log.txt"
    f.write_bytes(b"caf\xe9 debug line\n" + SMALL_BODY.encode())
    p = parse_log_file(f)
    assert p.reached_final and p.final_val_loss == 3.2775
    assert any("not valid UTF-8" in s for s in p.problems)


def test_to_dict_is_json_without_source():
    p = parse_log_file(VEFUSED_0)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["source_sha256"] == p.source_sha256 and d["final_val_loss"] == 3.2767
    assert d["step_lines"] == len(p.steps) and d["unknown_lines"] == 0 and d["known_lines"] == 3 and d["gpus"] == p.gpus
    assert "Placeholder source" not in json.dumps(d)


# --- the competition's formats (issue 12 item 6, issue 14) ------------------------------------------------

from harness.logs import ProblemKind  # noqa: E402


def test_late_2024_layout_keeps_the_sources_last_newline(tmp_path):
    """Late-2024 scripts f.write(code) and then the separator: no blank line, and the source's own last
    newline belongs to it (the hash must equal the script file's)."""
    script = "import os\nwith open(sys.argv[0]) as f:\n    code = f.read()\nf.write(code)\nprint('done')\n"
    text = script + SEPARATOR + "\n" + SMALL_HEADER + SEPARATOR + "\n" + SMALL_BODY
    p = parse_log(text)
    assert p.source == script and p.source_sha256 == hashlib.sha256(script.encode()).hexdigest()
    # the print0(code) layout drops exactly the newline print added
    assert parse_log(print0_log("print0(code)\nx = 1\n")).source == "print0(code)\nx = 1\n"


def test_banner_lines_are_known_and_only_unknown_lines_are_reported():
    banner = ("74\nCompiling model and warming up kernels (~7 minutes on first execution)\n"
              "Sampling steps [0, 1, 2, 391, 392,\n 393, 783] for warmup\nResetting Model\n"
              "Training DataLoader: total number of tokens: 900000000 across 9 files\n"
              "Warmup step 3/30\nsomething else entirely\n")
    p = parse_log(print0_log("x = 1\n", body=banner + SMALL_BODY))
    assert p.known_lines == 7 and p.unknown_lines == 1
    (unknown,) = p.problems_of(ProblemKind.UNKNOWN_LINES)
    assert "something else entirely" in unknown.message and unknown.line is not None


def test_problems_carry_kinds():
    cut = parse_log_file(FIX / "variant_cut_off.txt")
    assert cut.issues[0].kind is ProblemKind.CUT_OFF and cut.issues[0].line is not None
    assert parse_log("hello\n").issues[0].kind is ProblemKind.NO_STEPS
    edited = SMALL_BODY.replace("step:3/3 val_loss:3.2775 train_time:160ms", "step:3/3 val_loss:3.2775 train_time:150ms")
    assert parse_log(edited).problems == []  # steps below 12 are not checked (timer resets, nan averages)


def test_step_avg_must_fit_train_time():
    lines = [f"step:{s}/40 train_time:{s * 50}ms step_avg:50.00ms" for s in range(12, 41)]
    lines.append("step:40/40 val_loss:3.2800 train_time:2000ms step_avg:50.00ms")
    assert parse_log("\n".join(lines) + "\n").problems == []
    lines[-1] = "step:40/40 val_loss:3.2800 train_time:2030ms step_avg:50.00ms"  # edited by 30 ms
    (bad,) = parse_log("\n".join(lines) + "\n").issues
    assert bad.kind is ProblemKind.STEP_AVG and "step:40" in bad.message
    late_2024 = [f"step:{s}/40 train_time:{(s - 10) * 50}ms step_avg:50.00ms" for s in range(12, 41)]
    late_2024.append("step:40/40 val_loss:3.2800 train_time:1500ms step_avg:50.00ms")
    assert parse_log("\n".join(late_2024) + "\n").problems == []  # 2024: the 10 warm-up steps are not timed
