"""`speedrun verify PATH` and `speedrun verify --each FOLDER`: the checks of harness/verify.py as a table, or
one line per record folder. Every string from a folder is shown as rich Text (never markup)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.errors import HarnessError
from harness.verify import NO_CLAIM, NOT_VERIFIED, TRACK_TARGETS, VERIFIED, check_alpha, show, verify_path


def _text(value) -> Text:
    return Text(show(value))


def cmd_verify(path: str, target: float | None, alpha: float | None) -> int:
    report = verify_path(path, target=target, alpha=alpha)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped into a file or CI log: do not fold the details
    t = Table(title=_text(f"verify {report.path}"), show_lines=False)
    t.add_column("check", no_wrap=True)
    t.add_column("result", no_wrap=True)
    t.add_column("detail", overflow="fold")
    for c in report.checks:
        result = (Text("PASS", style="green") if c.ok else
                  Text("FAIL", style="red") if c.ok is False else Text("n.a.", style="dim"))
        t.add_row(_text(c.name), result, _text(c.detail))
    console.print(t)

    r = Table(title="runs", show_lines=False)
    for col in ("run", "group", "status", "claim", "final step", "val_loss", "time s", "code"):
        r.add_column(col, no_wrap=True)
    r.add_column("notes", overflow="fold")
    for row in report.runs:
        notes = row["reason"] or (row["problems"][0] if row["problems"] else "")
        step = f"{row['final_step']}/{row['total_steps']}" if row["final_step"] is not None else (
            f"-/{row['total_steps']}" if row["total_steps"] else "-")
        r.add_row(
            _text(row["label"]), _text(row["group"]), _text(row["status"]), "yes" if row["in_claim"] else "no",
            step, _text(row["val_loss_text"] or "-"), f"{row['time_s']:.3f}" if row["time_s"] is not None else "-",
            (row["source_sha256"] or "-")[:8], _text(str(notes)[:120]),
        )
    console.print(r)
    failed = report.failing
    if report.ok:
        console.print(Text(f"VERIFIED: all {sum(c.ok is True for c in report.checks)} checks pass", style="green"))
        return 0
    line = Text(f"{report.verdict}", style="red")
    line.append(show(f": {len(failed)} check(s) fail: " + ", ".join(failed)), style=None)
    console.print(line)
    return 1


def sweep_folders(folder: Path) -> list[Path]:
    """The record folders under FOLDER: its subfolders (records/track_1_short/<record>/), or, for a folder of
    tracks (records/), the subfolders of each."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if subs and all(p.name in TRACK_TARGETS or p.name.startswith("track_") for p in subs):
        return [r for s in subs for r in sweep_folders(s)]
    return subs


def sweep_line(folder: Path, target: float | None, alpha: float | None) -> tuple[str, str]:
    """(verdict, one line) for one record folder; never raises on the folder's content."""
    try:
        r = verify_path(folder, target=target, alpha=alpha)
    except HarnessError as e:
        return "ERROR", f"ERROR        {show(folder.name)}: {show(e)}"
    p = f"{r.p:.4f}" if r.p is not None else "-"
    claim = show(r.claim_label) if r.claim_label else "-"
    fails = ", ".join(r.failing)
    return r.verdict, (f"{r.verdict:<12} {show(folder.name)}  claim={claim}  n={r.n}  p={p}"
                       + (f"  failing: {fails}" if fails else ""))


def cmd_verify_each(folder: str, target: float | None, alpha: float | None) -> int:
    if alpha is not None:
        check_alpha(alpha)
    root = Path(folder)
    if not root.is_dir():
        raise HarnessError(f"{show(root)}: no such folder")
    counts: Counter = Counter()
    folders = sweep_folders(root)
    if not folders:
        raise HarnessError(f"{show(root)}: no record folders in it")
    for f in folders:
        verdict, line = sweep_line(f, target, alpha)
        counts[verdict] += 1
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    summary = ", ".join(f"{counts[v]} {v}" for v in (VERIFIED, NOT_VERIFIED, NO_CLAIM, "ERROR") if counts[v])
    sys.stdout.write(f"{len(folders)} folders: {summary}\n")
    return 0 if counts[VERIFIED] == len(folders) else 1
