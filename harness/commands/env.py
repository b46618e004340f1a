"""`speedrun env [--check TRACK] [--json]`: this node's fingerprint and, with --check, what differs from the
track's pins; `speedrun env --for LOG`: the install spec of the versions a record log's header names."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.errors import HarnessError
from harness.extract import load_record_code
from harness.fingerprint import campaign_env, fingerprint, fingerprint_rows
from harness.record_pins import LABELS, LOG_PIN_KEYS, install_spec, pin_differences
from harness.tracks import load_track


def cmd_env(check_track: str | None, as_json: bool) -> int:
    """`speedrun env [--check TRACK] [--json]`."""
    track = load_track(check_track) if check_track else None  # HarnessError for an unknown track
    fp = fingerprint()
    env = campaign_env(track, fp) if track else None
    if as_json:
        print(json.dumps(env if env else {"fingerprint": fp}, indent=2, default=str))
        return 0 if env is None or env["record_grade"] else 1
    console = Console()  # values, names and mismatches are Text: they quote the node and a track.toml
    table = Table(title="environment fingerprint", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in fingerprint_rows(fp):
        table.add_row(Text(str(k)), Text(str(v)))
    console.print(table)
    if env is None:
        return 0
    if env["record_grade"]:
        console.print(Text.assemble(("record-grade", "green"),
                                    f" for track {track.name}: matches its pins and frozen files"))
        return 0
    console.print(Text.assemble(("not record-grade", "red"), f" for track {track.name}:"))
    for m in env["mismatches"]:
        console.print(Text(f"  - {m}"))
    return 1


def cmd_env_for(path: str) -> int:
    """`speedrun env --for LOG_OR_RECORD_FOLDER`."""
    code = load_record_code(path)
    if not code.pins:
        raise HarnessError(f"{code.log}: its header names no versions (no `Running ...` lines)")
    print(f"# environment of {code.log}")
    print("# " + ", ".join(f"{LABELS[k]} {code.pins[k]}" for k in LOG_PIN_KEYS if k in code.pins))
    for line in install_spec(code.pins):
        print(line)
    diffs = pin_differences(code.pins, fingerprint())
    print("# this node: " + ("matches the log" if not diffs else "differs in " + "; ".join(diffs)))
    return 0
