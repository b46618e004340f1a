"""verify on the write-up forms and folder layouts of the competition's records, and on forgeries of them.

Folders are built by tests/record_folders.py in the exact formats, with values of our own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from harness.verify import (C_DUPLICATES, C_FINAL, C_LINKS, C_LISTS, C_OMITTED, C_P, C_PRINTED, C_SOURCE,
                            C_STEP_AVG, NO_CLAIM, NOT_VERIFIED, VERIFIED, verify_path)
from harness.commands.verify import cmd_verify
from record_folders import (BASE_LOSSES, BASE_TIMES, PR_LOSSES, PR_TIMES, block, log_text, source,
                            write_logs)


def failing(r) -> set[str]:
    return {c.name for c in r.checks if c.ok is False}


def two_arm_folder(root: Path, readme: str) -> Path:
    write_logs(root / "this_pr", PR_LOSSES, PR_TIMES)
    write_logs(root / "baseline", BASE_LOSSES, BASE_TIMES, code=source("baseline"), seed0=50)
    (root / "README.md").write_text(readme)
    return root


MULTI_ARM = ("# Faster thing\n\n```\n"
             "                 Runs  Steps   Time μ  Loss μ       p\n"
             "Baseline            5   1490  89.2172  3.2789  0.0315\n\n"
             f"Baseline:\n  losses = [{', '.join(BASE_LOSSES)}]\n  times  = [{', '.join(BASE_TIMES)}]\n\n"
             f"This PR:\n  losses = [{', '.join(PR_LOSSES)}]\n  times  = [{', '.join(PR_TIMES)}]\n```\n")


def test_several_arms_in_one_fence_the_pr_is_the_claim(tmp_path):
    r = verify_path(two_arm_folder(tmp_path / "rec", MULTI_ARM), target=3.28)
    assert r.verdict == VERIFIED, failing(r)
    assert r.claim_label.startswith("'This PR'") and r.n == 6
    (base,) = r.checks_named("block 1")
    assert base.ok is True and "'Baseline'" in base.detail and "logs in baseline" in base.detail


def test_forgery_pr_losses_edited_is_not_verified_on_the_baseline(tmp_path):
    edited = MULTI_ARM.replace(PR_LOSSES[2], "3.2759")
    r = verify_path(two_arm_folder(tmp_path / "rec", edited), target=3.28)
    assert r.verdict == NOT_VERIFIED and r.claim_label.startswith("'This PR'")
    assert C_LISTS in failing(r) and "3.2759" in r.check(C_LISTS).detail


def test_forgery_pr_logs_deleted_fails_the_claim(tmp_path):
    root = two_arm_folder(tmp_path / "rec", MULTI_ARM)
    shutil.rmtree(root / "this_pr")
    r = verify_path(root, target=3.28)
    assert r.verdict == NOT_VERIFIED and r.claim_label.startswith("'This PR'")
    assert "the claim's logs are missing" in r.check(C_FINAL).detail


def test_accs_pasted_from_an_interactive_session(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "README.md").write_text(
        "Validation:\n\n```\n>>> import scipy.stats\n>>> accs = [" + ",".join(PR_LOSSES) + "]\n"
        ">>> print('p=%.4f' % scipy.stats.ttest_1samp(accs, 3.28, alternative='less').pvalue)\np=0.0007\n"
        ">>> print(torch.std_mean(torch.tensor(accs)))\n(tensor(0.0008), tensor(3.2778))\n```\n")
    r = verify_path(root)
    assert r.verdict == VERIFIED, failing(r)
    assert "loss_std=0.0008" in r.check(C_PRINTED).detail and "(no times list stated)" in r.check(C_LISTS).detail


def test_comment_with_trailing_text_is_checked(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    text = "```\n" + block(PR_LOSSES, PR_TIMES, p="0.0007 (statistically significant)", name="accs") + "```\n"
    (root / "README.md").write_text(text)
    assert verify_path(root).verdict == VERIFIED
    (root / "README.md").write_text(text.replace("p=0.0007", "p=0.0004"))
    r = verify_path(root)
    assert failing(r) == {C_PRINTED} and "printed p 0.0004" in r.check(C_PRINTED).detail


def test_statistics_in_subfolders_as_per_run_tables(tmp_path):
    root = two_arm_folder(tmp_path / "rec", "# Bigger thing\n\nSee the subfolders.\n")
    for arm, losses, times in (("this_pr", PR_LOSSES, PR_TIMES), ("baseline", BASE_LOSSES, BASE_TIMES)):
        rows = "".join(f"| {k:08x} | {l} | {round(float(t) * 1000)}ms |\n" for k, (l, t) in enumerate(zip(losses, times)))
        (root / arm / "statistics.md").write_text(f"# {arm} statistics\n\n| Run | val_loss | train_time |\n"
                                                 f"|---|---|---|\n{rows}")
    r = verify_path(root, target=3.28)
    assert r.verdict == VERIFIED, failing(r)
    assert r.claim_label.startswith(os.path.join("this_pr", "statistics.md")) and r.n == 6


def test_summary_table_states_n_and_mean_of_the_logs(tmp_path):
    table = ("| | n | mean val_loss | p(mean<3.28) |\n|---|---|---|---|\n"
             "| **this PR** | **6** | 3.2778 | 0.0007 |\n| baseline | 5 | 3.2789 | 0.0315 |\n")
    r = verify_path(two_arm_folder(tmp_path / "rec", table))
    assert r.verdict == VERIFIED, failing(r)
    assert r.claim_label.startswith("'this PR'")
    r = verify_path(two_arm_folder(tmp_path / "rec2", table.replace("**6**", "**8**")))
    assert C_LISTS in failing(r) and "n=8" in r.check(C_LISTS).detail


def test_plain_text_statistics(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    ms = ",".join(f"{round(float(t) * 1000)}ms" for t in PR_TIMES)
    (root / "README.md").write_text(f"Kernel work.\n\nval_loss: [{','.join(PR_LOSSES)}]\nmean: 3.2778\np-value: 0.0007\n\n"
                                    f"times: [{ms}]\nmean: 88412ms\n")
    r = verify_path(root, target=3.28)
    assert r.verdict == VERIFIED, failing(r)
    (root / "README.md").write_text((root / "README.md").read_text().replace("mean: 88412ms", "mean: 88012ms"))
    assert C_PRINTED in failing(verify_path(root, target=3.28))


def test_forgery_one_run_counted_twice(tmp_path):
    root = tmp_path / "rec"
    logs = write_logs(root, PR_LOSSES, PR_TIMES)
    shutil.copy(logs[0], root / "0f0f0f0f-copy.txt")
    losses, times = PR_LOSSES + [PR_LOSSES[0]], PR_TIMES + [PR_TIMES[0]]
    (root / "README.md").write_text("```\n" + block(losses, times) + "```\n")
    r = verify_path(root, target=3.28)
    assert failing(r) == {C_DUPLICATES} and "0f0f0f0f-copy.txt" in r.check(C_DUPLICATES).detail


def test_forgery_final_train_time_edited_by_tens_of_ms(tmp_path):
    root = tmp_path / "rec"
    logs = write_logs(root, PR_LOSSES, PR_TIMES)
    text = logs[1].read_text().replace("train_time:88377ms", "train_time:88337ms")  # 40 ms, order kept
    logs[1].write_text(text)
    times = list(PR_TIMES)
    times[1] = "88.337"
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, times) + "```\n")
    r = verify_path(root, target=3.28)
    assert failing(r) == {C_STEP_AVG} and logs[1].name in r.check(C_STEP_AVG).detail


def test_runs_of_the_claims_code_left_out_are_named(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "ffffffff-unlucky.txt").write_text(log_text("3.2851", "88.420", seed=77))
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n")
    r = verify_path(root, target=3.28)
    assert failing(r) == {C_OMITTED} and "ffffffff-unlucky.txt" in r.check(C_OMITTED).detail


def test_code_differing_in_meaning_names_the_line(tmp_path):
    root = tmp_path / "rec"
    logs = write_logs(root, PR_LOSSES, PR_TIMES)
    logs[3].write_text(logs[3].read_text().replace("WINDOW = 7", "WINDOW = 9", 1))
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n")
    r = verify_path(root, target=3.28)
    assert C_SOURCE in failing(r) and "WINDOW = 9" in r.check(C_SOURCE).detail


def test_one_log_and_no_statistics_is_no_claim(tmp_path):
    root = tmp_path / "old"
    write_logs(root, ["3.2793"], ["301.112"])
    (root / "README.md").write_text("A new optimizer. Val loss 3.2793 in 5 minutes.\n")
    r = verify_path(root, target=3.28)
    assert r.verdict == NO_CLAIM and r.n == 1 and r.check(C_FINAL).ok


def test_more_runs_listed_than_logs_present_fails_clearly(tmp_path):
    root = tmp_path / "medium"
    write_logs(root, ["2.9188"], ["1391.204"])
    (root / "README.md").write_text("Results from 4 runs:\n\n```\n[2.9188, 2.9193, 2.9179, 2.9201]\n```\n")
    r = verify_path(root, target=2.92)
    assert r.verdict == NOT_VERIFIED
    assert "4 runs listed, 1 finished logs here: the claim's logs are missing" in r.check(C_LISTS).detail
    assert not r.check(C_P).ok


# --- hostile input --------------------------------------------------------------------------------------


@pytest.mark.hostile
def test_non_finite_list_items_fail(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "README.md").write_text("```\n" + block(PR_LOSSES + ["nan"], PR_TIMES + ["inf"]) + "```\n")
    r = verify_path(root, target=3.28)
    assert C_LISTS in failing(r) and "non-finite" in r.check(C_LISTS).detail


@pytest.mark.hostile
def test_links_out_of_the_folder_are_named_not_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    extra = write_logs(outside, ["3.2700"], ["80.000"], seed0=90)
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n")
    os.symlink(extra[0], root / "aaaaaaaa-linked.txt")
    os.symlink(outside, root / "more_logs")
    r = verify_path(root, target=3.28)
    assert failing(r) == {C_LINKS}
    detail = r.check(C_LINKS).detail
    assert "aaaaaaaa-linked.txt ->" in detail and "more_logs ->" in detail
    assert len(r.runs) == 6  # the linked log was not read


@pytest.mark.hostile
def test_control_characters_and_markup_from_the_folder_are_printed_as_text(tmp_path, capsys):
    root = tmp_path / "rec [/b] [bold]x"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "\x1b[31mred\x1b[0m.txt").write_text(log_text("3.2851", "88.420", seed=78))
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n")
    assert cmd_verify(str(root), 3.28, None) == 1  # the extra log is omitted from the claim
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred" in out
    assert "[/b] [bold]x" in out


@pytest.mark.hostile
def test_markup_in_a_campaign_run_status_is_printed_as_text(tmp_path, capsys):
    from test_verify import make_campaign  # the campaign folder helper of the campaign tests

    import json
    root = make_campaign(tmp_path / "c [/b]", failed=1, baseline=False)
    run_json = root / "runs" / "7" / "run.json"
    run = json.loads(run_json.read_text())
    run["status"], run["reason"] = "[/bold]", "[link=http://evil.example][green]ok[/green]"
    run_json.write_text(json.dumps(run))
    assert cmd_verify(str(root), None, None) == 0
    out = capsys.readouterr().out
    assert "[/bold]" in out and "[link=http://evil.example]" in out


@pytest.mark.hostile
def test_a_log_over_the_size_cap_is_skipped_and_named(tmp_path, monkeypatch):
    import harness.verify as verify

    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n")
    big = root / "bbbbbbbb-huge.txt"
    big.write_text(log_text("3.2700", "80.000", seed=91) + "x" * 5000)
    monkeypatch.setattr(verify, "MAX_LOG_BYTES", 4000)  # the real cap is 64 MiB; the mechanism is the same
    r = verify_path(root, target=3.28)
    assert r.verdict == VERIFIED and len(r.runs) == 6  # never read, so not a run either
    assert "bbbbbbbb-huge.txt" in r.check("logs found").detail and "cap" in r.check("logs found").detail


@pytest.mark.hostile
def test_many_small_blocks_are_each_read_once(tmp_path):
    """A README of thousands of tiny blocks: every one is parsed (linear scan), the report stays short."""
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    junk = "".join(f"```\nlosses = [4.{k:04d}]\n```\n" for k in range(5000))
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES) + "```\n" + junk)
    r = verify_path(root, target=3.28)
    assert r.verdict == VERIFIED and len(r.blocks) == 5001
    assert len(r.checks) < 80 and "more arms" in r.check("other arms").detail


@pytest.mark.hostile
def test_alpha_out_of_range_is_one_error_line(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    for bad in ("2", "0", "-0.1", "nan"):
        p = run_cli("verify", str(root), "--target", "3.28", "--alpha", bad, timeout=60)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "alpha must be in (0, 0.5]" in p.stderr, p.stderr


# --- sweep ----------------------------------------------------------------------------------------------


@pytest.mark.hostile
def test_sweep_gives_one_line_per_folder_and_never_stops(tmp_path):
    top = tmp_path / "track_1_short"
    good = top / "2026-03-01_Good"
    write_logs(good, PR_LOSSES, PR_TIMES)
    (good / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES, p="0.0007") + "```\n")
    write_logs(top / "2024-10-01_OneLog", ["3.2790"], ["300.500"])
    missing = top / "2025-03-01_MoreListed"
    write_logs(missing, ["3.2770"], ["90.100"])
    (missing / "README.md").write_text("```\n" + block(["3.2770", "3.2771", "3.2772"], ["90.100", "90.2", "90.3"]) + "```\n")
    (top / "2024-06-01_NoLogs").mkdir()
    (top / "2024-06-01_NoLogs" / "README.md").write_text("[/b] no logs\n")
    p = run_cli("verify", "--each", str(top), timeout=120)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert [ln.split()[0] for ln in lines[:4]] == ["ERROR", "NO", "NOT", "VERIFIED"]
    assert "2026-03-01_Good" in lines[3] and "n=6" in lines[3] and "p=0.0007" in lines[3]
    assert "failing:" in lines[2] and "block lists = logs" in lines[2]
    assert lines[-1] == "4 folders: 1 VERIFIED, 1 NOT VERIFIED, 1 NO CLAIM, 1 ERROR"


def test_verify_does_not_import_torch(tmp_path):
    root = tmp_path / "rec"
    write_logs(root, PR_LOSSES, PR_TIMES)
    (root / "README.md").write_text("```\n" + block(PR_LOSSES, PR_TIMES, p="0.0007") + "```\n")
    code = ("import sys; from harness.verify import verify_path; r = verify_path(sys.argv[1]); "
            "print(r.verdict, 'torch' in sys.modules, 'scipy.stats' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["VERIFIED", "False", "False"], out.stderr
