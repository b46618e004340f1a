"""The code embedded in a record log, as files (`speedrun extract LOG_OR_RECORD_FOLDER [--out DIR]`), and where
an arm's code came from.

Every competition log starts with the source that produced it (docs/DESIGN.md "The log protocol"), so the log is
the reproducible artifact of a record. Since the Triton-kernel records the embedded text is the script
followed by one section per extra file the script logged:

    <script>\\n\\n----------------------------------------\\n# triton_kernels.py\\n----------------------------------------\\n\\n<file>

(40 dashes; later records add `# dc_triton_kernels.py` the same way). Cutting the text at those markers gives
the files back byte for byte: the script is what the record ran (`open(sys.argv[0]).read()`), each section the
file it read beside itself. Where the source ends and the header starts differs between layouts; that is the
parser's job (`harness.logs.parse_log(...).source`), so the files here always join back to exactly the source
the parser reads and hashes.

Nothing from a log is ever executed here: the files are written, hashed and (by the campaign) run unmodified.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.fsio import sha256_file, write_bytes_atomic
from harness.logs import parse_log_file
from harness.record_pins import log_pins
from harness.verify import verify_path

SCRIPT_NAME = "train_gpt.py"  # what the competition calls the script; the log does not name it
_DASHES = "-" * 40
# `\n\n` + 40 dashes + `\n# name.py\n` + 40 dashes + `\n\n`: the marker a record script writes before each file
_SECTION_RE = re.compile(r"\n\n" + _DASHES + r"\n# ([^\n]*)\n" + _DASHES + r"\n\n")
# A file name a log may give a section: a plain name in the code folder, never a path.
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class RecordCode:
    """The code of one record log, split into its files (the script first)."""

    files: list[tuple[str, str]]  # (file name, text) in log order
    source_sha256: str  # the parser's hash of the whole embedded text
    log: Path  # the log the code came from
    log_sha256: str
    pins: dict[str, str] = field(default_factory=dict)  # the log header's environment (see record_pins.log_pins)
    origin: Path | None = None  # the record folder it was chosen from, when a folder was given
    note: str = ""  # how it was chosen among a folder's logs

    @property
    def script_name(self) -> str:
        return self.files[0][0]

    def file_hashes(self) -> dict[str, str]:
        return {name: _sha256_text(text) for name, text in self.files}

    def joined(self) -> str:
        """The embedded text rebuilt from the files (equals the parser's source)."""
        script, rest = self.files[0][1], self.files[1:]
        return script + "".join(f"\n\n{_DASHES}\n# {name}\n{_DASHES}\n\n{text}" for name, text in rest)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_source(source: str, script_name: str = SCRIPT_NAME) -> list[tuple[str, str]]:
    """The embedded text as (name, text) files: the script, then every `# name.py` section."""
    marks = list(_SECTION_RE.finditer(source))
    files = [(script_name, source[: marks[0].start()] if marks else source)]
    for i, m in enumerate(marks):
        name = m.group(1).strip()
        if not _SAFE_NAME_RE.match(name) or name in (".", ".."):
            raise HarnessError(f"the log embeds a section named {name!r}: not a plain file name, refusing to write it")
        if any(name == n for n, _ in files):
            raise HarnessError(f"the log embeds two files named {name!r}")
        end = marks[i + 1].start() if i + 1 < len(marks) else len(source)
        files.append((name, source[m.end():end]))
    return files


def code_from_log(path: str | Path) -> RecordCode:
    """The code embedded in one log file; a log without embedded source (a stdout capture) is bad input."""

    log = Path(path)
    parsed = parse_log_file(log)
    if parsed.source is None:
        raise HarnessError(f"{log}: embeds no source code (no `=`*100 header after a script): nothing to extract")
    try:
        log.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise HarnessError(f"{log}: not valid UTF-8; its embedded code cannot be recovered byte for byte") from None
    code = RecordCode(files=split_source(parsed.source), source_sha256=parsed.source_sha256, log=log.resolve(),
                      log_sha256=sha256_file(log), pins=log_pins(parsed))
    if code.joined() != parsed.source:  # cannot happen by construction; a guard for the byte-for-byte promise
        raise HarnessError(f"{log}: the extracted files do not join back to the embedded source")
    return code


def code_from_folder(path: str | Path) -> RecordCode:
    """The code of a record (or campaign) folder's claim: the logs `speedrun verify` takes as the claim must
    embed one code; otherwise say which logs differ."""

    root = Path(path)
    # The claim's logs do not depend on the target (it only enters the t-test): any number will do here.
    report = verify_path(root, target=0.0)
    claim = [r for r in report.runs if r["in_claim"] and r["path"]]
    with_code = [r for r in claim if r["source_sha256"]]
    if not with_code:
        raise HarnessError(f"{root}: no log of its claim embeds its source code: nothing to extract")
    codes = list(dict.fromkeys(r["source_sha256"] for r in with_code))
    if len(codes) > 1:
        listing = "; ".join(f"{h[:12]}: " + ", ".join(r["label"] for r in with_code if r["source_sha256"] == h)
                            for h in codes)
        raise HarnessError(f"{root}: the logs of its claim embed {len(codes)} different codes ({listing}); "
                           f"name one log instead of the folder")
    chosen = with_code[0]
    code = code_from_log(chosen["path"])
    code.origin = root.resolve()
    code.note = (f"the code of the claim's {len(with_code)} log(s) ({chosen['label']} and the others: one hash)"
                 if len(with_code) > 1 else f"the claim's only log with code, {chosen['label']}")
    return code


def load_record_code(path: str | Path) -> RecordCode:
    """A record log (a file) or a record/campaign folder."""
    p = Path(path)
    if not p.exists():
        raise HarnessError(f"{p}: no such file or folder")
    return code_from_folder(p) if p.is_dir() else code_from_log(p)


def is_record_spec(spec: str | Path) -> bool:
    """A command-line argument that names record code: a log file (.txt) or a folder that is not a track."""
    p = Path(spec)
    if p.suffix == ".txt":
        return True
    return p.is_dir() and not (p / "track.toml").is_file()


# ---------------------------------------------------------------------------------------------------------
# Writing the files


def write_code(code: RecordCode, out_dir: str | Path, extra_files: list[str | Path] | None = None) -> dict:
    """Write the files (and the named extra files, which the log does not embed) into out_dir; return the
    provenance campaign.json keeps. An existing file of the same name is kept only when it is identical."""
    out = Path(out_dir).resolve()
    extras = _read_extras(code, extra_files or [])
    planned = [(name, text.encode("utf-8")) for name, text in code.files] + [(n, data) for n, _, data in extras]
    for name, data in planned:
        target = out / name
        if target.exists() and (not target.is_file() or target.read_bytes() != data):
            raise HarnessError(f"{target} exists and differs from the code to write; choose another --out")
    for name, data in planned:
        write_bytes_atomic(out / name, data)
    return {
        "kind": "record-folder" if code.origin else "record-log",
        "from": str(code.origin or code.log),
        "log": str(code.log),
        "log_sha256": code.log_sha256,
        "note": code.note,
        "source_sha256": code.source_sha256,
        "dir": str(out),
        "script": code.script_name,
        "files": code.file_hashes(),
        "extra_files": {n: {"from": str(src), "sha256": hashlib.sha256(data).hexdigest()} for n, src, data in extras},
    }


def _read_extras(code: RecordCode, paths: list[str | Path]) -> list[tuple[str, Path, bytes]]:
    embedded = {name for name, _ in code.files}
    out: list[tuple[str, Path, bytes]] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise HarnessError(f"--add-file {p}: no such file")
        if p.name in embedded:
            raise HarnessError(f"--add-file {p}: the log embeds its own {p.name}; a record's code runs unmodified")
        if any(p.name == n for n, _, _ in out):
            raise HarnessError(f"--add-file names two files called {p.name}")
        out.append((p.name, p.resolve(), p.read_bytes()))
    return out


def discard_code(provenance: dict) -> None:
    """Remove the files write_code wrote (a pre-flight stopped before anything ran), and its folder if empty."""
    d = Path(provenance["dir"])
    for name in list(provenance.get("files", {})) + list(provenance.get("extra_files", {})):
        (d / name).unlink(missing_ok=True)
    for folder in (d, d.parent, d.parent.parent):  # <campaign>/code/<arm>, <campaign>/code, <campaign>
        try:
            folder.rmdir()  # only when empty: nothing else of the campaign is ever removed
        except OSError:
            break


# ---------------------------------------------------------------------------------------------------------
# The command


def default_out_dir(code: RecordCode) -> Path:
    return Path(f"code-{code.source_sha256[:12]}")


RECORD_KINDS = ("record-log", "record-folder")  # the code kinds that come from a record log


def describe_code(code: dict) -> str:
    """One line: where an arm's code came from."""
    kind = code.get("kind")
    if kind == "track":
        return f"track {code.get('track')}"
    if kind == "script":
        return f"script {code.get('from')}"
    if kind in RECORD_KINDS:
        what = "record log" if kind == "record-log" else "record folder"
        return f"{what} {code.get('from')}, code {str(code.get('source_sha256'))[:12]}"
    return "unknown origin"
