"""The whole pipeline on the real tiny track: a campaign through the CLI, then `speedrun verify` on it,
then the same folder tampered with in the ways a reviewer must catch."""

import json
import re
import shutil

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def tiny_campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "tiny-campaign"
    r = run_cli("run", "tiny", "--runs", "4", "--out", out, "--quiet", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_campaign_prints_the_block_and_writes_the_record(tiny_campaign):
    out, r = tiny_campaign
    assert "# p=" in r.stdout and "losses = [" in r.stdout
    camp = json.loads((out / "campaign.json").read_text())
    assert camp["status"] == "complete" and camp["track"]["name"] == "tiny"
    assert camp["environment"]["fingerprint"] is not None
    record = (out / "record.md").read_text()
    assert "## Timing and Validation" in record and "## Runs" in record
    assert (out / "plots" / "val_loss.png").exists()


def test_verify_passes_on_an_untouched_campaign(tiny_campaign):
    out, _ = tiny_campaign
    r = run_cli("verify", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout


def test_verify_catches_an_edited_loss(tiny_campaign, tmp_path):
    out, _ = tiny_campaign
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    record = (copy / "record.md").read_text()
    first_loss = re.search(r"losses = \[(\d\.\d+)", record).group(1)
    edited = f"{float(first_loss) - 0.01:.4f}"
    (copy / "record.md").write_text(record.replace(f"losses = [{first_loss}", f"losses = [{edited}", 1))
    r = run_cli("verify", copy)
    assert r.returncode == 1
    assert re.search(r"block lists = logs\s*│\s*FAIL", r.stdout), r.stdout


def test_verify_catches_a_log_cut_off_midway(tiny_campaign, tmp_path):
    out, _ = tiny_campaign
    copy = tmp_path / "cut"
    shutil.copytree(out, copy)
    log = next((copy / "runs" / "2" / "logs").glob("*.txt"))
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[: len(lines) - 30]))
    r = run_cli("verify", copy)
    assert r.returncode == 1
    assert re.search(r"every log reached its final step\s*│\s*FAIL", r.stdout), r.stdout


def test_two_rank_campaign_through_torchrun_matches_one_process(tiny_campaign, tmp_path):
    # Multi-rank path on CPU: torchrun --standalone with 2 gloo ranks, one log from rank 0, same math.
    out, _ = tiny_campaign
    r = run_cli("run", "tiny", "--runs", "1", "--nproc", "2", "--out", tmp_path / "two", "--quiet", timeout=300)
    assert r.returncode == 4, r.stdout + r.stderr  # every run ok; one run gives no p-value: verdict FAIL
    two = json.loads((tmp_path / "two" / "runs" / "0" / "run.json").read_text())
    one = json.loads((out / "runs" / "0" / "run.json").read_text())
    assert "torch.distributed.run" in two["command"] and "--nproc_per_node=2" in two["command"]
    assert len(list((tmp_path / "two" / "runs" / "0" / "logs").glob("*.txt"))) == 1
    assert two["seed"] == one["seed"] == 0
    assert abs(two["final_val_loss"] - one["final_val_loss"]) <= 2e-3
