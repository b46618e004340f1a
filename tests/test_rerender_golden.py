"""Golden re-render: `speedrun report` on a copy of every committed campaign under results/ writes a record.md
byte-identical to the committed one.

This pins what the renderer produces while the harness is restructured (issue 18: behaviour unchanged, same
files byte for byte). The committed record.md files were refreshed with `speedrun report` once, when this
test was added: the ones from 2026-11-27 predated the verdict line (launch, c1e60d8) and the compile-cache
columns of the runs table (8560bc3), and nothing else differed (the plots re-render byte-identical too).
When the renderer changes on purpose, re-run `speedrun report results/<track>/<id>` on each and commit the
new record.md with the change that caused it.

The console of the same command (the runs table, the block, the results line and the verdict) is pinned too,
in tests/fixtures/rerender/<track>--<id>.console.txt, at a fixed width of 120 columns and without colour. To
renew one after a deliberate change to the console, from the repository root:
    COLUMNS=120 python -m harness report results/<track>/<id> > tests/fixtures/rerender/<track>--<id>.console.txt"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from conftest import REPO, committed_files  # noqa: E402
from harness.cli import main  # noqa: E402

CONSOLES = REPO / "tests" / "fixtures" / "rerender"


def committed_campaigns() -> list[Path]:
    """Campaign folders whose record.md is in git."""
    return [p.parent for p in committed_files("results/*/*/record.md") if (p.parent / "campaign.json").is_file()]


CAMPAIGNS = committed_campaigns()


def test_there_are_committed_campaigns_to_compare():
    # an empty list would make the parametrized test below vanish instead of failing
    assert len(CAMPAIGNS) >= 1


def _inputs(folder: Path) -> dict[str, bytes]:
    """Every file report reads but must not write: all but record.md, plots/ and the lock file."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("record.md", "campaign.lock") and "plots" not in p.relative_to(folder).parts}


def _plot_names(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "plots").glob("*.png"))


@pytest.mark.parametrize("committed", CAMPAIGNS, ids=[str(c.relative_to(REPO)) for c in CAMPAIGNS])
def test_report_rerenders_record_md_and_console_unchanged(committed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # rich sizes its table to this when stdout is not a terminal
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    copy = tmp_path / committed.name
    shutil.copytree(committed, copy)
    (copy / "record.md").write_text("stale\n", encoding="utf-8")  # proves the file below was rewritten
    before = _inputs(copy)

    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out

    expected = (committed / "record.md").read_bytes()
    rendered = (copy / "record.md").read_bytes()
    assert rendered == expected, (
        f"record.md of {committed.relative_to(REPO)} re-renders differently; if the renderer changed on purpose, "
        f"run `speedrun report {committed.relative_to(REPO)}` and commit the new record.md")
    assert _inputs(copy) == before  # campaign.json, run.json, logs and traces are read, never rewritten
    assert _plot_names(copy) == _plot_names(committed)  # the same figures, so the same ## Plots links
    console = CONSOLES / f"{committed.parent.name}--{committed.name}.console.txt"
    assert console.is_file(), f"no {console.relative_to(REPO)}: write it as this module's docstring says"
    # as printed for the committed folder itself (`speedrun report results/<track>/<id>` from the repo root)
    assert out.replace(str(copy), str(committed.relative_to(REPO))) == console.read_text(encoding="utf-8")


def test_a_piped_summary_keeps_every_column_whole(tmp_path):
    """Into a file or a CI log (no terminal, no COLUMNS), the runs table is at least 120 columns wide: at rich's
    default 80 the H200 log showed "compi…" and "baseli…" in place of the column and arm names."""
    import os
    committed = REPO / "results" / "short" / "2026-12-01-h200-ref-from-log-vs-short"
    copy = tmp_path / committed.name
    shutil.copytree(committed, copy)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    r = subprocess.run([sys.executable, "-m", "harness", "report", str(copy)], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "run" in line and "arm" in line)
    assert "train time (s)" in header and "compile (s)" in header and "…" not in r.stdout.split("## Timing")[0]
    assert any("│ baseline " in line for line in r.stdout.splitlines())
