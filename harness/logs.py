"""The log protocol: parse the competition's training logs (and our tracks', which print the same format).

Layouts seen in the competition's record logs (docs/DESIGN.md "The log protocol"):

  2025 onwards (print0):          2024 (f.write):               stdout capture:
      <script source>                 ====== (100 '=')              step:... lines only,
      ====== (100 '=')                <script source>               plus whatever else
      Running Python 3.12.7 ...       ======                        the script printed
      Running PyTorch 2.10.0 ...      Running pytorch 2.5.1 ...
      Running Triton version 3.6.0    nvidia-smi:
      <nvidia-smi output>             <nvidia-smi output>
      ======                          ======
      step:0/1390 val_loss:... train_time:0ms step_avg:0.03ms
      step:1/1390 train_time:...      (2024: train_loss: fields, step_avg:nanms early on,
      ...                              and the timer reset to 0 after step 10)
      step:1390/1390 val_loss:3.2775 train_time:79532ms step_avg:57.22ms
      peak memory allocated: 30220 MiB reserved: 38672 MiB   (older: peak memory consumption: N MiB)

The official result of a run is the val_loss and train_time of the final `step:N/N val_loss:` line.

Only a line that is exactly 100 '=' is a separator, and step lines are read only after the header: the
embedded source contains its own f-strings ("step:{step}/...") and `"=" * 100` expressions.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError

SEPARATOR = "=" * 100

# `step:1390/1390 val_loss:3.2775 train_time:79532ms step_avg:57.22ms`: key:value fields after the step (forks
# add their own fields; unknown ones are ignored, but train_time must be there).
_STEP_RE = re.compile(r"^step:(\d+)/(\d+)(\s.*)?$")
_FIELD_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(\S*)")
_MS_RE = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+|nan|inf))ms$", re.I)
_PEAK_NEW_RE = re.compile(r"^peak memory allocated:\s*(\d+)\s*MiB\s+reserved:\s*(\d+)\s*MiB\s*$")
_PEAK_OLD_RE = re.compile(r"^peak memory consumption:\s*(\d+)\s*MiB\s*$")
# A step line anywhere (used to find logs among other .txt files); the same shape _STEP_RE accepts.
_ANY_STEP_RE = re.compile(r"^step:\d+/\d+\s.*\btrain_time:\S+ms", re.M)

_PY_RE = re.compile(r"^Running Python\s+(\S+)")
_TORCH_RE = re.compile(r"^Running PyTorch\s+(\S+)(?:\s+compiled for CUDA\s+(\S+))?", re.I)
_TRITON_RE = re.compile(r"^Running Triton(?: version)?\s+(\S+)", re.I)
_DRIVER_RE = re.compile(r"Driver Version:\s*(\S+)")
# nvidia-smi GPU row: `|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |  ...`
_GPU_ROW_RE = re.compile(
    r"^\|\s*(\d+)\s+(.+?)\s+(On|Off|N/A)\s*\|\s*[0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+"
)

# 2024 scripts reset their timer after the first 10 steps (warm-up excluded), so train_time drops once
# there, on a line whose step_avg is still nan. That drop is the format, not a fault.
_WARMUP_RESET_MAX_STEP = 11

_MAX_EXAMPLES = 3  # unknown lines quoted in problems

# A log file larger than this is refused unread: the largest real record log is 1.6 MB, so 64 MiB is far above
# any real one and keeps a hostile folder from exhausting memory.
MAX_LOG_BYTES = 64 << 20

# Lines the competition's record scripts print between (and around) the step lines: part of the format, not
# problems. Seen in records/track_1_short and track_2_medium (2024-2026).
_KNOWN_LINE_RES = [re.compile(p) for p in (
    r"^Compiling model and warming up kernels \(~\d+ minutes? on first execution\)$",
    r"^Resetting Model$",
    r"^Sampling steps \[[\d, ]*\]? ?(?:for warmup)?$",  # the list can wrap onto following lines
    r"^[\d, ]+\] for warmup$",  # the end of a wrapped `Sampling steps [...]` line
    r"^[\d, ]+,$",  # the middle of a wrapped `Sampling steps [...]` line
    r"^Warmup step \d+/\d+$",
    r"^\d+$",  # the medium script prints a stray number (`74`) right after the header
    r"^Model parameters:$",
    r"^(?:Total|Embedding|Non-embedding) parameters: [\d,]+$",
    r"^[\w.]+: torch\.Size\(\[[\d, ]*\]\) torch\.\w+(?: \S+)*$",  # the parameter listing of some records
    r"^Bucket \d+: \d+ params, [\d.]+ MB$",
    r"^Created \d+ gradient buckets$",
    r"^Registering bucketed gradient hooks\.\.\.$",
    r"^inductor_output_code: \S+$",
    r"^W\d{4} [\d:.]+ \d+ torch/distributed/run\.py:\d+\]",  # torchrun's OMP_NUM_THREADS warning
    r"^\*{10,}$",
    r"^(?:Training|Validation) DataLoader: total number of tokens: \d+ across \d+ files?$",  # 2024 scripts
    r"^=+$",  # 2024 scripts close the data-loader lines with a shorter rule of '='
)]


class ProblemKind(enum.Enum):
    """What is wrong with a log, for code to act on (verify checks kinds, never message text)."""

    NO_STEPS = "no step lines"
    CUT_OFF = "cut off before the final line"
    SEVERAL_FINALS = "more than one final val_loss line"
    NON_FINITE = "non-finite loss"
    NOT_MONOTONIC = "steps or train_time go backwards"
    STEP_AVG = "step_avg does not fit train_time"
    UNKNOWN_LINES = "unrecognized lines"
    NOT_UTF8 = "not valid UTF-8"


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str  # one line, for people
    line: int | None = None  # 1-based line in the log, where one line is to blame


@dataclass
class StepLine:
    step: int
    total: int
    val_loss: float | None
    train_loss: float | None
    train_time_ms: float
    step_avg_ms: float | None  # nan allowed (2024 logs print step_avg:nanms early on)
    val_loss_text: str | None = None  # as printed (4 or 6 decimals), to compare at the log's precision
    line_no: int = 0  # 1-based line number in the log


@dataclass
class ParsedLog:
    source: str | None  # the script source embedded at the top
    source_sha256: str | None  # sha256 of source (utf-8): equals the script file's sha256
    header: list[str]  # lines between the separators that enclose the header
    python_version: str | None
    torch_version: str | None
    cuda_version: str | None
    triton_version: str | None
    gpus: list[str]  # GPU names from the nvidia-smi table, one per GPU row
    steps: list[StepLine]
    val_curve: list[tuple[int, float]]
    final_step: int | None
    total_steps: int | None
    final_val_loss: float | None  # from the final `step:N/N val_loss:` line only
    final_train_time_ms: float | None
    peak_memory_allocated_mib: int | None
    peak_memory_reserved_mib: int | None
    reached_final: bool  # a `step:N/N val_loss:` line exists
    issues: list[Problem]  # what is wrong, by kind
    final_val_loss_text: str | None = None  # the final val_loss exactly as printed
    driver_version: str | None = None  # from the nvidia-smi banner
    unknown_lines: int = 0  # lines after the header that are neither step, memory nor known banner lines
    known_lines: int = 0  # the scripts' standard banner lines (warm-up, sampled steps, reset, ...)
    notes: list[str] = field(default_factory=list)  # facts about the format worth showing, not problems
    # `diagnostic:` lines: the script ran with a switch that leaves its recipe (our short track prints one)
    diagnostics: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """The issues as one line each (run.json's log_problems)."""
        return [p.message for p in self.issues]

    def problems_of(self, kind: ProblemKind) -> list[Problem]:
        return [p for p in self.issues if p.kind is kind]

    @property
    def monotonic_problems(self) -> list[str]:
        return [p.message for p in self.problems_of(ProblemKind.NOT_MONOTONIC)]

    @property
    def nonfinite(self) -> list[str]:
        """Step lines with a nan/inf loss, as 'step:S val_loss:nan'."""
        out = []
        for s in self.steps:
            for name in ("val_loss", "train_loss"):
                v = getattr(s, name)
                if v is not None and not math.isfinite(v):
                    out.append(f"step:{s.step} {name}:{v}")
        return out

    def to_dict(self) -> dict:
        return {
            "source_sha256": self.source_sha256,
            "source_chars": len(self.source) if self.source is not None else None,
            "header_lines": len(self.header),
            "python_version": self.python_version,
            "torch_version": self.torch_version,
            "cuda_version": self.cuda_version,
            "triton_version": self.triton_version,
            "driver_version": self.driver_version,
            "gpus": list(self.gpus),
            "step_lines": len(self.steps),
            "val_curve": [[s, v] for s, v in self.val_curve],
            "final_step": self.final_step,
            "total_steps": self.total_steps,
            "final_val_loss": self.final_val_loss,
            "final_val_loss_text": self.final_val_loss_text,
            "final_train_time_ms": self.final_train_time_ms,
            "peak_memory_allocated_mib": self.peak_memory_allocated_mib,
            "peak_memory_reserved_mib": self.peak_memory_reserved_mib,
            "reached_final": self.reached_final,
            "unknown_lines": self.unknown_lines,
            "known_lines": self.known_lines,
            "diagnostics": list(self.diagnostics),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_step_line(line: str, line_no: int) -> StepLine | None:
    m = _STEP_RE.match(line)
    if not m:
        return None
    fields = dict(_FIELD_RE.findall(m.group(3) or ""))
    tt = _MS_RE.match(fields.get("train_time", ""))
    if not tt:
        return None  # every step line of the protocol carries train_time:<n>ms
    train_time = float(tt.group(1))
    step_avg = None
    sa = _MS_RE.match(fields.get("step_avg", ""))
    if sa:
        step_avg = float(sa.group(1))
    val_text = fields.get("val_loss")
    val_loss = _number(val_text) if val_text is not None else None
    if val_text is not None and val_loss is None:
        return None
    train_text = fields.get("train_loss")
    train_loss = _number(train_text) if train_text is not None else None
    return StepLine(
        step=int(m.group(1)),
        total=int(m.group(2)),
        val_loss=val_loss,
        train_loss=train_loss,
        train_time_ms=train_time,
        step_avg_ms=step_avg,
        val_loss_text=val_text,
        line_no=line_no,
    )


def looks_like_log(text: str) -> bool:
    """True when the text holds at least one step line (how logs are told apart from other .txt files)."""
    return _ANY_STEP_RE.search(text) is not None


def _line_offsets(lines: list[str]) -> list[int]:
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    return offsets


def _split_layout(text: str, lines: list[str]) -> tuple[str | None, int, int, int]:
    """Locate source, header and body. Returns (source, header_start, header_end, body_start) as line indices
    (header = lines[header_start:header_end]); with no separator at all the whole text is body."""
    seps = [i for i, line in enumerate(lines) if line.rstrip("\r") == SEPARATOR]
    if not seps:
        return None, 0, 0, 0
    # The header opens with a separator directly followed by a `Running ...` line (every layout seen).
    # Fallbacks: the second-to-last separator, or the only one.
    opening = next((i for i in seps if i + 1 < len(lines) and lines[i + 1].startswith("Running ")), None)
    if opening is None:
        opening = seps[-2] if len(seps) >= 2 else seps[0]
    closing = next((i for i in seps if i > opening), None)
    if closing is not None:
        header_end, body_start = closing, closing + 1
    else:
        # Cut off inside the header, or a layout without a closing separator: the header runs to the first
        # step line.
        header_end = next((i for i in range(opening + 1, len(lines)) if _STEP_RE.match(lines[i])), len(lines))
        body_start = header_end

    offsets = _line_offsets(lines)
    if seps[0] == 0 and opening > 0:
        # 2024 layout: the source sits between the first separator and the header's; f.write(code) added
        # nothing, so the text in between is the source exactly.
        source = text[offsets[1]:offsets[opening]]
    elif opening > 0:
        before = text[:offsets[opening]]
        if _WRITES_CODE_RAW.search(before) and not _PRINTS_CODE.search(before):
            # Late 2024: the script's own f.write(code) put the separator right after the source's last
            # newline, which belongs to the source (its hash must equal the script file's).
            source = before
        else:
            # print0(code) added one '\n' after the source.
            source = before[:-1] if before.endswith("\n") else before
    else:
        source = None  # a header with no source before it
    return source, opening + 1, header_end, body_start


# How the embedded script wrote itself into the log (its own text says so).
_WRITES_CODE_RAW = re.compile(r"^\s*f\.write\(code\)", re.M)
_PRINTS_CODE = re.compile(r"^\s*print0\(code\b", re.M)


def _parse_header(header: list[str]) -> dict:
    info = {"python": None, "torch": None, "cuda": None, "triton": None, "driver": None, "gpus": []}
    for line in header:
        if info["python"] is None and (m := _PY_RE.match(line)):
            info["python"] = m.group(1)
        elif info["torch"] is None and (m := _TORCH_RE.match(line)):
            info["torch"], info["cuda"] = m.group(1), m.group(2)
        elif info["triton"] is None and (m := _TRITON_RE.match(line)):
            info["triton"] = m.group(1)
        if info["driver"] is None and (m := _DRIVER_RE.search(line)):
            info["driver"] = m.group(1)
        if m := _GPU_ROW_RE.match(line):
            info["gpus"].append(m.group(2).strip())
    return info


def check_monotonic(parsed: ParsedLog) -> list[str]:
    """Steps that go backwards, train_time that decreases, a total that changes. A train line followed by
    the val line of the same step is the format (equal step numbers are fine)."""
    return [p.message for p in _monotonic_problems(parsed.steps)]


def _monotonic_problems(steps: list[StepLine]) -> list[Problem]:
    problems = []
    prev = None
    for s in steps:
        if prev is not None:
            def add(message: str) -> None:
                problems.append(Problem(ProblemKind.NOT_MONOTONIC, f"line {s.line_no}: {message}", s.line_no))

            if s.total != prev.total:
                add(f"total steps change from {prev.total} to {s.total}")
            if s.step < prev.step:
                add(f"step goes backwards ({prev.step} -> {s.step})")
            if s.train_time_ms < prev.train_time_ms and not _is_warmup_reset(s):
                add(f"train_time decreases at step {s.step} ({prev.train_time_ms:g}ms -> {s.train_time_ms:g}ms)")
        prev = s
    return problems


# step_avg is train_time divided by the steps timed so far: the step number (2025 on), or the step less the
# 10 untimed warm-up steps (2024). Printed with 2 decimals against a whole-ms train_time, so a line fits when
# |train_time - step_avg * d| <= 0.005 * d + 0.5. Every step line of the 1,531 real record logs fits one of
# them; an edited train_time (tens of ms) does not. Early steps are left out (timer resets, nan averages).
_STEP_AVG_DIVISORS = {"step": 0, "step - 10": 10}
_STEP_AVG_FROM_STEP = 12


def _step_avg_problems(steps: list[StepLine]) -> list[Problem]:
    checked = [s for s in steps if s.step >= _STEP_AVG_FROM_STEP and s.step_avg_ms is not None
               and math.isfinite(s.step_avg_ms) and math.isfinite(s.train_time_ms)]
    if not checked:
        return []

    def misfits(offset: int) -> list[StepLine]:
        return [s for s in checked
                if abs(s.train_time_ms - s.step_avg_ms * (s.step - offset)) > 0.005 * (s.step - offset) + 0.5 + 1e-6]

    best = min((misfits(o) for o in _STEP_AVG_DIVISORS.values()), key=len)
    if not best:
        return []
    s = best[0]
    more = f" (+{len(best) - 1} more lines)" if len(best) > 1 else ""
    return [Problem(ProblemKind.STEP_AVG, f"line {s.line_no}: step:{s.step} train_time:{s.train_time_ms:g}ms does "
                    f"not fit its step_avg:{s.step_avg_ms:g}ms (train_time / steps timed){more}", s.line_no)]


def _is_warmup_reset(s: StepLine) -> bool:
    return s.step <= _WARMUP_RESET_MAX_STEP and s.step_avg_ms is not None and math.isnan(s.step_avg_ms)


def parse_log(text: str) -> ParsedLog:
    """Parse one log (file content or captured stdout). Never raises on odd content: what is wrong or
    missing goes to `problems`."""
    text = text.replace("\r\n", "\n")  # Windows line endings; the source is hashed with '\n' endings
    lines = text.split("\n")
    source, h_start, h_end, body_start = _split_layout(text, lines)
    header = lines[h_start:h_end]
    info = _parse_header(header)

    steps: list[StepLine] = []
    unknown: list[tuple[int, str]] = []
    known = 0
    peak_alloc = peak_reserved = None
    for i in range(body_start, len(lines)):
        line = lines[i].rstrip("\r").strip()
        if not line:
            continue
        s = _parse_step_line(line, i + 1)
        if s is not None:
            steps.append(s)
            continue
        if m := _PEAK_NEW_RE.match(line):
            peak_alloc, peak_reserved = int(m.group(1)), int(m.group(2))
        elif m := _PEAK_OLD_RE.match(line):
            peak_alloc = int(m.group(1))
        elif any(r.match(line) for r in _KNOWN_LINE_RES):
            known += 1
        else:
            unknown.append((i + 1, line))

    finals = [s for s in steps if s.val_loss_text is not None and s.step == s.total]
    final = finals[-1] if finals else None
    parsed = ParsedLog(
        source=source,
        source_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest() if source is not None else None,
        header=header,
        python_version=info["python"],
        torch_version=info["torch"],
        cuda_version=info["cuda"],
        triton_version=info["triton"],
        gpus=info["gpus"],
        steps=steps,
        val_curve=[(s.step, s.val_loss) for s in steps if s.val_loss is not None],
        final_step=final.step if final else None,
        total_steps=steps[-1].total if steps else None,
        final_val_loss=final.val_loss if final else None,
        final_train_time_ms=final.train_time_ms if final else None,
        peak_memory_allocated_mib=peak_alloc,
        peak_memory_reserved_mib=peak_reserved,
        reached_final=final is not None,
        issues=[],
        final_val_loss_text=final.val_loss_text if final else None,
        driver_version=info["driver"],
        unknown_lines=len(unknown),
        known_lines=known,
        diagnostics=[line for _, line in unknown if line.startswith("diagnostic:")],
    )

    issues = parsed.issues

    def problem(kind: ProblemKind, message: str, line: int | None = None) -> None:
        issues.append(Problem(kind, message, line))

    if not steps:
        problem(ProblemKind.NO_STEPS, "no step lines (`step:N/T ... train_time:...ms`) found")
    elif final is None:
        last = steps[-1]
        where = f"last step line is step:{last.step}/{last.total} at line {last.line_no}"
        tail = lines[-1].strip() if lines and lines[-1].strip() else None
        if tail and _parse_step_line(tail, len(lines)) is None and not _PEAK_NEW_RE.match(tail):
            where += f", then an incomplete last line {tail[:60]!r}"
        problem(ProblemKind.CUT_OFF, f"cut off: no final `step:{last.total}/{last.total} val_loss:` line ({where})",
                last.line_no)
    if len(finals) > 1:
        problem(ProblemKind.SEVERAL_FINALS,
                f"{len(finals)} final val_loss lines; the last one (line {final.line_no}) is used", final.line_no)
    bad = parsed.nonfinite
    if bad:
        problem(ProblemKind.NON_FINITE, f"non-finite loss on {len(bad)} step line(s), first: {bad[0]}")
    issues.extend(_monotonic_problems(steps))
    issues.extend(_step_avg_problems(steps))
    if unknown:
        examples = "; ".join(f"line {n}: {t[:60]!r}" for n, t in unknown[:_MAX_EXAMPLES])
        problem(ProblemKind.UNKNOWN_LINES, f"{len(unknown)} unrecognized line(s) after the header ignored ({examples})",
                unknown[0][0])
    if any(_is_warmup_reset(b) and a.train_time_ms > b.train_time_ms for a, b in zip(steps, steps[1:])):
        parsed.notes.append("train_time restarts after the warm-up steps (2024 scripts excluded steps 1-10)")
    return parsed


def read_log_text(path) -> tuple[str, int]:
    """A log file's text and the number of undecodable byte sequences replaced in it; a missing, unreadable, binary
    or oversized file is one clear HarnessError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_LOG_BYTES:
            raise HarnessError(f"{path}: {size} bytes, larger than any log ({MAX_LOG_BYTES} bytes at most); not read")
        data = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise HarnessError(f"{path}: is a folder, not a log file") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror or e})") from None
    if b"\x00" in data:
        raise HarnessError(f"{path}: binary file, not a text log")
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd")


def parse_log_file(path) -> ParsedLog:
    """Read and parse a log file; a missing, unreadable or binary file is one clear HarnessError."""
    text, replaced = read_log_text(path)
    parsed = parse_log(text)
    if replaced:
        parsed.issues.append(Problem(
            ProblemKind.NOT_UTF8,
            f"not valid UTF-8 ({replaced} undecodable byte sequence(s) replaced; the source hash is unreliable)"))
    return parsed
