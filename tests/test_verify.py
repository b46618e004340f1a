"""`speedrun verify` on real record folders (tests/fixtures/logs) and on campaign folders built from them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, run_cli
from harness.errors import HarnessError
from harness.logs import parse_log_file
from harness.record_block import render_block
from harness.verify import (C_BLOCK, C_EXCLUDED, C_FINAL, C_LISTS, C_LOGS, C_MONOTONIC, C_OTHER_LOGS, C_P,
                            C_PRINTED, C_RECIPE, C_SCHEDULE, C_SCRIPT, C_SEQUENTIAL, C_SOURCE, C_STEP_AVG,
                            C_TARGET, C_WRITEUP,
                            verify_path)
from harness.commands.verify import cmd_verify

FIX = FIXTURES / "logs"
VEFUSED = FIX / "record_2026-01-30_VeFused"
MEDIUM = FIX / "record_2025-12-31_medium_BulkSmallTrackTransfer"
CUT = FIX / "variant_cut_off.txt"
FIRST = "0ba09d92-4ef1-440f-85e3-9d2766294db4.txt"
SECOND = "2b1ab140-92f0-49d8-a164-71e45ab15f77.txt"

# Seed 001 (records/track_1_short/2026-01-30_VeFused/README.md): the claim, and the previous record's
# numbers "timed on same machine" whose logs live elsewhere.
CLAIM_LOSSES = [3.2767, 3.2777, 3.2795, 3.2774, 3.2799, 3.2779, 3.2777]
CLAIM_TIMES = [97.825, 97.777, 97.818, 97.777, 97.745, 97.715, 97.728]
PREV_LOSSES = [3.2776, 3.2803, 3.2773, 3.2794, 3.2784, 3.2794]
PREV_TIMES = [98.908, 98.878, 98.796, 98.667, 98.800, 98.776]


def failing(report) -> set[str]:
    return {c.name for c in report.checks if c.ok is False}


@pytest.fixture
def record(tmp_path) -> Path:
    d = tmp_path / "record"
    shutil.copytree(VEFUSED, d)
    return d


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


# --- competition folders --------------------------------------------------------------------------------


def test_real_record_verifies(record):
    r = verify_path(record)
    assert r.ok, [c for c in r.checks if c.ok is False]
    assert r.claim_block_index == 0
    assert r.check(C_LISTS).ok and r.check(C_PRINTED).ok and r.check(C_P).ok and r.check(C_SOURCE).ok
    assert "p=0.0025 < 0.01" in r.check(C_P).detail
    # the second block quotes the previous record, whose logs are not here: reported, not failed
    (prev,) = r.checks_named("block 2")
    assert prev.ok is None and "no logs behind it" in prev.detail
    assert sorted(row["val_loss"] for row in r.runs) == sorted(CLAIM_LOSSES)
    assert all(row["in_claim"] for row in r.runs)


def test_real_medium_record_with_tensor_print_style_verifies(tmp_path):
    d = tmp_path / "medium"
    shutil.copytree(MEDIUM, d)
    r = verify_path(d)
    assert r.ok, [c for c in r.checks if c.ok is False]
    assert "loss_std=7.0638e-05" in r.check(C_PRINTED).detail
    assert r.check(C_SOURCE).ok is None  # tail-only logs embed no source


def test_edited_loss_in_block_fails_the_lists(record):
    edit(record / "README.md", "losses = [3.2767, 3.2777, 3.2795", "losses = [3.2767, 3.2777, 3.2785")
    r = verify_path(record)
    assert failing(r) == {C_LISTS}
    detail = r.check(C_LISTS).detail
    assert "in the block but not in the logs: [3.2785]" in detail and "not in the block: [3.2795]" in detail
    assert r.claim_block_index == 0  # still the block closest to the logs, not the previous record's


def test_edited_time_in_block_fails_the_lists(record):
    edit(record / "README.md", "97.745", "97.654")
    r = verify_path(record)
    assert failing(r) == {C_LISTS} and "97.654" in r.check(C_LISTS).detail


def test_edited_printed_p_fails_the_printed_check(record):
    edit(record / "README.md", "# p=0.0025", "# p=0.0015")
    r = verify_path(record)
    assert failing(r) == {C_PRINTED}
    assert "printed p 0.0015, the logs give 0.0025" in r.check(C_PRINTED).detail


def test_edited_printed_mean_fails_the_printed_check(record):
    edit(record / "README.md", "mean=97.7693", "mean=97.6693")
    r = verify_path(record)
    assert failing(r) == {C_PRINTED} and "time_mean" in r.check(C_PRINTED).detail


def test_block_order_does_not_decide_the_claim(record):
    readme = record / "README.md"
    text = readme.read_text()
    first, second = text.index("```\nimport scipy.stats"), text.index("Previous record (timed on same machine):")
    claim_block = text[first:second]
    prev_start = text.index("```\nimport scipy.stats", second)
    prev_end = text.index("```\n", text.index("# time:", prev_start)) + 4
    prev_block = text[prev_start:prev_end]
    readme.write_text("Previous record:\n\n" + prev_block + "\nThis record:\n\n" + claim_block)
    r = verify_path(record)
    assert r.ok and r.claim_block_index == 1
    assert r.checks_named("block 1")[0].ok is None


def test_cut_off_log_fails(record):
    shutil.copy(CUT, record / FIRST)
    r = verify_path(record)
    assert C_FINAL in failing(r) and C_LISTS in failing(r)
    detail = r.check(C_FINAL).detail
    assert detail.startswith("1 of 7") and FIRST in detail and "step:252/1575" in detail
    assert "[3.2767]" in r.check(C_LISTS).detail  # the value the block has but no finished log gives


def test_crashed_log_left_beside_the_others_fails(record):
    shutil.copy(CUT, record / "ffffffff-crashed.txt")  # the block's 7 values still match the 7 finished logs
    r = verify_path(record)
    assert failing(r) == {C_FINAL} and "ffffffff-crashed.txt" in r.check(C_FINAL).detail


def test_non_monotonic_times_fail(record):
    edit(record / SECOND, "step:1570/1575 train_time:97261ms", "step:1570/1575 train_time:90261ms")
    r = verify_path(record)
    assert failing(r) == {C_MONOTONIC, C_STEP_AVG}  # the line's own step_avg no longer fits it either
    assert SECOND in r.check(C_MONOTONIC).detail and "step 1570" in r.check(C_MONOTONIC).detail


def test_different_source_in_one_log_is_named(record):
    edit(record / SECOND, "ms/max(step, 1)", "ms/max(step, 2)")
    r = verify_path(record)
    assert failing(r) == {C_SOURCE}
    detail = r.check(C_SOURCE).detail
    assert detail.startswith("6 logs share code") and SECOND in detail and FIRST not in detail
    assert "max(step, 2)" in detail  # the differing line is named


def test_comment_and_whitespace_only_differences_are_the_same_code(record):
    edit(record / SECOND, "# Placeholder source written", "# Placeholder source, edited,")
    edit(record / SECOND, "def log_step(step, total, loss, ms):", "def log_step(step,total,  loss, ms):  # why")
    r = verify_path(record)
    assert r.ok, failing(r)
    assert "only in comments or whitespace" in r.check(C_SOURCE).detail


def test_script_file_hash(record):
    source = parse_log_file(record / FIRST).source
    (record / "train_gpt.py").write_bytes(source.encode())
    r = verify_path(record)
    assert r.ok and r.check(C_SCRIPT).ok and "train_gpt.py" in r.check(C_SCRIPT).detail
    (record / "train_gpt.py").write_bytes(source.replace("\n", "\r\n").encode())  # a Windows checkout
    assert verify_path(record).check(C_SCRIPT).ok
    (record / "train_gpt.py").write_bytes(source.encode() + b"# one more line\n")
    r = verify_path(record)
    assert failing(r) == {C_SCRIPT}


def test_old_logs_in_a_subfolder_are_not_the_claim(record):
    old = record / "old_logs"
    old.mkdir()
    shutil.copy(CUT, old / "3fc0503f.txt")
    shutil.copy(FIX / "real_2025-08-23_SparseAttnGate_trimmed.txt", old / "d2a3507f.txt")
    (record / "notes.txt").write_text("ran 7 seeds on an 8xH100 node\n")  # not a log: ignored
    (record / "weights.txt").write_bytes(b"\x00\x01binary")  # unreadable: skipped, said so
    r = verify_path(record)
    assert r.ok, [c for c in r.checks if c.ok is False]
    assert "logs in (top)" in r.check(C_LOGS).detail and "weights.txt" in r.check(C_LOGS).detail
    outside = r.check(C_OTHER_LOGS)
    assert outside.ok is None and "old_logs/3fc0503f.txt" in outside.detail
    assert len(r.runs) == 9 and sum(row["in_claim"] for row in r.runs) == 7


def test_rounded_six_decimal_losses_fail_with_a_hint(tmp_path):
    d = tmp_path / "medium6"
    d.mkdir()
    log = (FIX / "real_2025-11-12_medium_6decimals_tail.txt").read_text()
    (d / "a.txt").write_text(log)
    (d / "b.txt").write_text(log.replace("val_loss:2.919649 train_time:1496283ms", "val_loss:2.918512 train_time:1496301ms"))
    block = render_block([2.919649, 2.918512], [1496.283, 1496.301], 2.92)  # render_block prints 4 decimals
    (d / "README.md").write_text("```\n" + block + "```\n")
    r = verify_path(d)
    assert C_LISTS in failing(r)
    assert "rounded to 4 decimals" in r.check(C_LISTS).detail
    # written at the logs' precision, the same claim verifies
    text = (d / "README.md").read_text().replace("[2.9196, 2.9185]", "[2.919649, 2.918512]")
    (d / "README.md").write_text(text)
    assert C_LISTS not in failing(verify_path(d))


# --- targets --------------------------------------------------------------------------------------------


def _strip_p(readme: Path) -> None:
    lines = readme.read_text().splitlines(keepends=True)
    readme.write_text("".join(l for l in lines if "ttest_1samp" not in l and not l.startswith("# p=")))


def test_target_from_block_and_from_flag(record):
    r = verify_path(record, target=None)
    assert "from the block" in r.check(C_TARGET).detail
    assert failing(verify_path(record, target=3.30)) == {C_TARGET}  # --target contradicting the block
    _strip_p(record / "README.md")
    with pytest.raises(HarnessError, match="--target"):
        verify_path(record)
    r = verify_path(record, target=3.28)
    assert r.ok and "from --target" in r.check(C_TARGET).detail and "p=0.0025" in r.check(C_P).detail
    r = verify_path(record, target=3.278)  # a target the runs do not beat
    assert failing(r) == {C_P}


def test_alpha(record):
    assert failing(verify_path(record, alpha=0.001)) == {C_P}


# --- malformed input ------------------------------------------------------------------------------------


def test_missing_path_and_file_path(tmp_path, record):
    with pytest.raises(HarnessError, match="no such file or folder"):
        verify_path(tmp_path / "nope")
    with pytest.raises(HarnessError, match="is a file"):
        verify_path(record / FIRST)


def test_folder_without_logs(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(VEFUSED / "README.md", d / "README.md")
    (d / "notes.txt").write_text("no step lines here\n")
    with pytest.raises(HarnessError, match="no logs found"):
        verify_path(d)


def test_folder_without_block_fails_but_recomputes(record):
    (record / "README.md").write_text("# no block here\n")
    r = verify_path(record, target=3.28)
    assert failing(r) == {C_BLOCK}
    assert r.check(C_P).ok and r.claim_block_index is None


@pytest.mark.hostile
def test_a_malformed_block_is_reported_and_the_rest_checked(record):
    readme = record / "README.md"
    readme.write_text(readme.read_text() + "\n```\nlosses = [3.2767, oops]\ntimes = [1.0, 2.0]\n```\n")
    r = verify_path(record)
    (bad,) = [c for c in r.checks if c.ok is False]
    assert bad.name.startswith("block 3 (README.md line") and "malformed" in bad.detail and "'oops'" in bad.detail
    assert r.check(C_LISTS).ok and r.check(C_P).ok  # the claim is still found and checked


@pytest.mark.hostile
def test_a_write_up_that_is_not_utf8_is_one_failing_check(record):
    (record / "notes.md").write_bytes(b"\xff\xfe not utf-8 ```")
    r = verify_path(record)
    assert failing(r) == {C_WRITEUP} and "notes.md: not UTF-8" in r.check(C_WRITEUP).detail


# --- campaign folders -----------------------------------------------------------------------------------

PREV_SOURCE = "# Placeholder for the previous record's script (baseline arm of the campaign).\n"


def _baseline_log(loss: float, time_s: float) -> str:
    """A baseline log in the record's format: the template's header, the previous record's final numbers."""
    text = (VEFUSED / FIRST).read_text()
    source = parse_log_file(VEFUSED / FIRST).source
    text = text.replace(source, PREV_SOURCE, 1)
    final = "step:1575/1575 val_loss:3.2767 train_time:97825ms step_avg:62.11ms"
    ms = round(time_s * 1000)
    return text.replace(final, f"step:1575/1575 val_loss:{loss:.4f} train_time:{ms}ms step_avg:{ms / 1575:.2f}ms")


def make_campaign(root: Path, *, failed: int = 1, baseline: bool = True, record_md: bool = True,
                  final_step: int = 1575, until_significant: bool = False) -> Path:
    cand_source = parse_log_file(VEFUSED / FIRST).source
    arms = {"candidate": {"name": "candidate", "script_sha256": hashlib.sha256(cand_source.encode()).hexdigest()}}
    if baseline:
        arms["baseline"] = {"name": "baseline", "script_sha256": hashlib.sha256(PREV_SOURCE.encode()).hexdigest()}
    runs = [("candidate", f.read_text(), "ok") for f in sorted(VEFUSED.glob("*.txt"))]
    if baseline:
        runs += [("baseline", _baseline_log(l, t), "ok") for l, t in zip(PREV_LOSSES, PREV_TIMES)]
    runs += [("candidate", CUT.read_text(), "failed")] * failed
    campaign = {"format": 1, "kind": "compare", "id": root.name, "schedule": [a for a, _, _ in runs],
                "track": {"name": "short", "target": 3.28, "alpha": 0.01, "final_step": final_step},
                "arms": arms, "status": "complete"}
    if until_significant:
        campaign["until_significant"] = {"max_runs": 20}
    root.mkdir(parents=True)
    (root / "campaign.json").write_text(json.dumps(campaign))
    for k, (arm, text, status) in enumerate(runs):
        run_dir = root / "runs" / str(k)
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / f"{k:08d}-uuid.txt").write_text(text)
        run = {"index": k, "arm": arm, "status": status, "log_file": f"logs/{k:08d}-uuid.txt",
               "reason": "exited with code 1: torch.OutOfMemoryError" if status == "failed" else None}
        (run_dir / "run.json").write_text(json.dumps(run))
        (run_dir / "output.txt").write_text("")
    if record_md:
        md = "# short campaign\n\n```\n" + render_block(CLAIM_LOSSES, CLAIM_TIMES, 3.28) + "```\n"
        if baseline:
            md += "\nPrevious record (timed on same machine):\n\n```\n"
            md += render_block(PREV_LOSSES, PREV_TIMES, 3.28, with_p=False) + "```\n"
        (root / "record.md").write_text(md)
    return root


def test_campaign_verifies_and_reports_failed_runs(tmp_path):
    d = make_campaign(tmp_path / "c1", failed=2)
    r = verify_path(d)
    assert r.ok, [c for c in r.checks if c.ok is False]
    excl = r.check(C_EXCLUDED)
    assert excl.ok is None and excl.detail.startswith("2 failed runs excluded") and "OutOfMemoryError" in excl.detail
    assert "arm candidate (7)" in r.check(C_LOGS).detail
    assert r.check(C_SCRIPT).ok and r.check(C_SCHEDULE).ok
    (baseline_block,) = r.checks_named("block 2")
    assert baseline_block.ok is True and "arm baseline" in baseline_block.detail
    assert [row["in_claim"] for row in r.runs].count(True) == 7
    assert {row["status"] for row in r.runs if row["excluded"]} == {"failed"}


def test_campaign_baseline_block_edited_fails(tmp_path):
    d = make_campaign(tmp_path / "c2")
    edit(d / "record.md", "98.908", "98.108")
    r = verify_path(d)
    (bad,) = failing(r)
    assert bad.startswith("block 2 (record.md") and "arm baseline" in r.check(bad).detail
    assert r.check(C_LISTS).ok  # the claim itself still holds


def test_campaign_arm_script_mismatch_and_final_step(tmp_path):
    d = make_campaign(tmp_path / "c3", final_step=1600)
    c = json.loads((d / "campaign.json").read_text())
    c["arms"]["candidate"]["script_sha256"] = "0" * 64
    (d / "campaign.json").write_text(json.dumps(c))
    r = verify_path(d)
    assert failing(r) == {C_SCRIPT, C_SCHEDULE}
    assert "1600" in r.check(C_SCHEDULE).detail


def test_campaign_without_record_md(tmp_path):
    d = make_campaign(tmp_path / "c4", record_md=False, baseline=False)
    r = verify_path(d)
    assert failing(r) == {C_BLOCK}
    assert "from campaign.json" in r.check(C_TARGET).detail and r.check(C_P).ok


def test_campaign_stdout_fallback_and_sequential_note(tmp_path):
    d = make_campaign(tmp_path / "c5", baseline=False, failed=0, until_significant=True)
    for run_dir in (d / "runs").iterdir():  # no logs/*.txt: fall back to the captured stdout
        log = next((run_dir / "logs").glob("*.txt"))
        text = log.read_text()
        (run_dir / "output.txt").write_text(text[text.index("Compiling model"):])
        shutil.rmtree(run_dir / "logs")
        run = json.loads((run_dir / "run.json").read_text())
        run.pop("log_file")
        (run_dir / "run.json").write_text(json.dumps(run))
    r = verify_path(d)
    assert r.ok and r.check(C_SOURCE).ok is None
    assert r.check(C_SEQUENTIAL).ok is None


def test_campaign_malformed_json_is_one_clear_error(tmp_path):
    d = make_campaign(tmp_path / "c6", baseline=False)
    (d / "runs" / "0" / "run.json").write_text("{not json")
    with pytest.raises(HarnessError, match="run.json: not valid JSON"):
        verify_path(d)


# --- the command ----------------------------------------------------------------------------------------


def test_cmd_verify_prints_tables_and_returns_status(record, capsys):
    assert cmd_verify(str(record), None, None) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and C_LISTS in out and FIRST in out
    edit(record / "README.md", "# p=0.0025", "# p=0.0015")
    assert cmd_verify(str(record), None, None) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out and "FAIL" in out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("verify", *args, timeout=120)


def test_cli_exit_codes(record, tmp_path):
    ok = _cli(str(record))
    assert ok.returncode == 0, ok.stderr
    edit(record / "README.md", "losses = [3.2767,", "losses = [3.2768,")
    bad = _cli(str(record))
    assert bad.returncode == 1 and "NOT VERIFIED" in bad.stdout
    missing = _cli(str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_logs = _cli(str(empty))
    assert no_logs.returncode == 2 and "no logs found" in no_logs.stderr
    for p in (ok, bad, missing, no_logs):
        assert "Traceback" not in p.stderr


def test_one_run_campaign_nan_block_matches_its_recomputation(tmp_path):
    """A one-run campaign prints nan for p and the stds (the block's own expressions give nan): the printed
    check passes, and only the statistics (p < alpha) and the shortened schedule fail. Real H100 campaign."""
    camp = tmp_path / "proxy"
    shutil.copytree(REPO / "results" / "short" / "2026-11-27-h100-proxy", camp)
    r = verify_path(camp)
    assert r.check(C_PRINTED).ok is True
    assert failing(r) == {C_P, C_SCHEDULE}  # 128 steps, not the track's 1575
    assert "at least 2" in r.check(C_P).detail


def test_a_run_with_a_diagnostic_switch_cannot_claim(tmp_path):
    """Same code, recipe changed through the environment (e.g. SPEEDRUN_FP8_HEAD=0): the script's `diagnostic:`
    line fails the recipe check, naming the run and the switch."""
    camp = tmp_path / "proxy"
    shutil.copytree(REPO / "results" / "short" / "2026-11-27-h100-proxy", camp)
    assert verify_path(camp).check(C_RECIPE).ok is True
    for log in list((camp / "runs" / "0" / "logs").glob("*.txt")) + [camp / "runs" / "0" / "output.txt"]:
        edit(log, "\ncompile_and_warmup_time:188694ms", "\ndiagnostic: fp8_head=0 (not the recipe of the track)"
                                                       "\ncompile_and_warmup_time:188694ms")
    r = verify_path(camp)
    assert failing(r) == {C_P, C_SCHEDULE, C_RECIPE}
    assert "run 0: fp8_head=0" in r.check(C_RECIPE).detail


@pytest.mark.parametrize("key, value", [("target", "abc"), ("alpha", "x")])
def test_campaign_json_with_a_non_numeric_target_or_alpha_is_one_error(tmp_path, key, value):
    root = make_campaign(tmp_path / "c", record_md=False)
    campaign = json.loads((root / "campaign.json").read_text())
    campaign["track"][key] = value
    (root / "campaign.json").write_text(json.dumps(campaign))
    with pytest.raises(HarnessError, match=f"campaign.json: track {key} must be a number, got '{value}'"):
        cmd_verify(str(root), None, None)
