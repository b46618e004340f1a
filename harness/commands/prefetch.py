"""`speedrun prefetch SCRIPT_OR_LOG [--from DIR] [--data-path ROOT]`: fetch what the code downloads at run time
into the offline cache (harness/prefetch.py) and print what was cached."""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.extract import is_record_spec, load_record_code
from harness.prefetch import Cache, data_root, prefetch, scan_folder, scan_source


def cmd_prefetch(spec: str, from_dirs: list[str] | None = None, data_path: str | None = None) -> int:
    """`speedrun prefetch SCRIPT_OR_LOG`: fetch what it downloads at run time, print what was cached."""
    p = Path(spec)
    if is_record_spec(p):
        code = load_record_code(p)
        needs = [n for name, text in code.files for n in scan_source(text, name)]
        what = f"{code.log} (code {code.source_sha256[:12]})"
    elif p.is_file():
        needs = scan_folder(p.parent) if p.suffix == ".py" else scan_source(p.read_text(encoding="utf-8"), p.name)
        what = str(p)
    else:
        raise HarnessError(f"{p}: no such script, log or record folder")
    if data_path and not Path(data_path).is_dir():
        raise HarnessError(f"--data-path {data_path}: no such folder")
    cache = Cache.under(Path(data_path) if data_path else data_root())
    for n in needs:
        if n.kind == "unresolved":
            print(f"not prefetched: {n.what()} at {n.where}")
    resolvable = [n for n in needs if n.kind != "unresolved"]
    if not resolvable:
        print(f"{what}: no run-time downloads found in its source")
        return 0
    fetched, failures = prefetch(resolvable, cache, [Path(d) for d in from_dirs or []])
    for item in fetched:
        if item["kind"] == "tiktoken":
            print(f"tiktoken {item['encoding']}: " + ", ".join(f"{f['sha256'][:12]} as {f['cache_name']}"
                                                                for f in item["files"]))
        else:
            print(f"{item['repo']} {item['ref']} -> revision {item['revision']} ({len(item['files'])} files)")
    print(f"cache: {cache.root} (manifest {cache.manifest_path.name}); campaigns run offline against it")
    if failures:
        raise HarnessError("; ".join(failures))
    return 0
