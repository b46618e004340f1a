"""results.py reads run.json and campaign.json into Run and Campaign: nothing a file holds is lost, a hand-edited
value is kept as it is, and what the harness wrote is written back byte for byte."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, committed_files
from harness.fsio import write_json_atomic
from harness.record_md import _runs_table_md
from harness.results import (CAMPAIGN_FIELDS, KINDS, RUN, RUN_FIELDS, Campaign, Run, is_ok, kind_of, load_campaign,
                             load_runs, run_folder)

COMMITTED = committed_files("results/*/*/campaign.json") + committed_files("results/*/*/runs/*/run.json")


def _held(record, names: tuple[str, ...], data: dict) -> dict:
    """What a typed record holds of a file: its fields the file named, then extra."""
    return {**{name: getattr(record, name) for name in names if name in data}, **record.extra}


def test_there_are_committed_files_to_read():
    assert any(p.name == "run.json" for p in COMMITTED) and any(p.name == "campaign.json" for p in COMMITTED)


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.parent.name}/{p.parent.name}/{p.name}" for p in COMMITTED])
def test_every_committed_file_reads_back_whole_and_writes_back_byte_for_byte(path, tmp_path):
    text = path.read_text()
    data = json.loads(text)
    if path.name == "run.json":
        record, names = Run.from_json(data), RUN_FIELDS
        written = record.to_json(tuple(data))  # the engine writes the fields a run of its status holds
    else:
        record, names = Campaign.from_json(data), CAMPAIGN_FIELDS
        written = record.to_json()
    held = _held(record, names, data)
    assert list(held.items()) == list(data.items())  # same keys, same values, same order
    if path.name == "campaign.json" and not all(name in data for name in ("format", "kind", "compile_cache")):
        return  # written before those fields existed: to_json() would add them as null
    write_json_atomic(tmp_path / path.name, written)
    assert (tmp_path / path.name).read_text() == text


def test_a_hand_edited_run_is_kept_as_it_is(tmp_path):
    run_dir = run_folder(tmp_path, 0)
    run_dir.mkdir(parents=True)
    edited = {"index": 0, "status": "ok", "final_val_loss": "3.27", "train_time_s": [1], "note": "by hand"}
    write_json_atomic(run_dir / "run.json", edited)
    (run,) = load_runs(tmp_path)
    assert run.final_val_loss == "3.27" and run.train_time_s == [1]  # wrong types: not converted, not refused
    assert run.arm is None and run.seed is None and run.telemetry is None  # missing: None, like null
    assert run.extra == {"note": "by hand"}  # not a field: kept
    assert "note" not in run.to_json(RUN_FIELDS)  # and never written as a field
    assert not is_ok(run, "main") and is_ok(run)
    row = _runs_table_md([run]).splitlines()[-1]
    assert "| 3.27 | [1] |" in row and row.startswith("| 0 |  |  | ok |")  # shown as the file holds it


def test_a_campaign_with_only_the_required_keys_reads_the_rest_as_none(tmp_path):
    write_json_atomic(tmp_path / "campaign.json", {"id": "c", "track": {"name": "tiny"}, "arms": {"main": {}},
                                                   "schedule": ["main"], "kind": ["not", "a", "name"], "x": 1})
    campaign = load_campaign(tmp_path)
    assert campaign.id == "c" and campaign.status is None and campaign.created is None and campaign.seeds is None
    assert campaign.kind == ["not", "a", "name"] and kind_of(campaign) is KINDS[RUN]  # a kind not known: a run
    assert campaign.extra == {"x": 1}


def test_no_committed_campaign_carries_the_competitions_code():
    """A campaign that re-timed a record holds its code (`code/<arm>/`, the arm's own logs, compile warnings that
    quote its kernels); those stay out of git: the project never carries the competition's code. The reference
    scripts mark their local changes `[reference: ...]`, so a file quoting them is caught by that marker."""
    files = committed_files("results/**/*")
    assert files
    assert not [f for f in files if f.relative_to(REPO).parts[3:4] == ("code",)]  # results/<track>/<id>/code/
    quoting = [f for f in files if f.suffix in (".txt", ".py") and "[reference:" in f.read_text(errors="replace")]
    assert not quoting, quoting
