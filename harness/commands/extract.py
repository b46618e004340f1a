"""`speedrun extract LOG_OR_RECORD_FOLDER [--out DIR]`: write the code a record log embeds (harness/extract.py)
and print its sha256."""

from __future__ import annotations

from pathlib import Path

from harness.extract import default_out_dir, load_record_code, write_code


def cmd_extract(path: str, out: str | None = None) -> int:
    """`speedrun extract`: write the files, print their sha256 (the `sha256sum` format) and where they came from."""
    code = load_record_code(path)
    out_dir = Path(out) if out else default_out_dir(code)
    prov = write_code(code, out_dir)
    for name, digest in prov["files"].items():
        print(f"{digest}  {Path(prov['dir']) / name}")
    print(f"embedded source sha256 {code.source_sha256} (the parser's hash; the files join back to it)")
    where = f"{code.log} (log sha256 {code.log_sha256[:12]})"
    if code.origin:
        where += f", {code.note} in {code.origin}"
    print(f"from {where}")
    return 0
