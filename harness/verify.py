"""`speedrun verify PATH`: recompute a record's claim from its logs and check it, check by check.

PATH is one of our campaign folders (campaign.json, runs/<k>/run.json, runs/<k>/logs/*.txt, record.md) or a
competition record folder (logs `*.txt` at the top or in subfolders per arm, the statistics in README.md /
statistics.md at the top or per subfolder; docs/DESIGN.md "Record folders"). Every number is taken from the logs:
the official result of a run is the val_loss and train_time of its final `step:N/N val_loss:` line.

How a claim is found. The write-up states statistics per arm (record_block.parse_writeup: blocks, one arm per
name line, tables, plain text). The logs are grouped by subfolder and by code (code that differs only in
comments or whitespace is one code). Each stated arm is matched to the group whose values it states. The
claim is the arm the write-up labels as the PR / the record / new; an arm labelled baseline / previous /
prior / master is never the claim while another arm exists; among the rest, the one whose logs match, with
a t-test, the latest. Every other arm is reported with its own check. A claim whose logs are missing fails.

`speedrun verify --each FOLDER` runs this on every record folder under FOLDER, one line each.

The folder is untrusted: files are read with size caps, links are not followed (a link out of the folder
fails a check), every string from it is shown as text with control characters escaped, and a malformed
write-up part is one failing check while the rest is checked.
"""

from __future__ import annotations

import hashlib
import difflib
import io
import math
import os
import re
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, ROUND_HALF_EVEN
from fractions import Fraction
from pathlib import Path

from harness.errors import HarnessError
from harness.logs import MAX_LOG_BYTES, ParsedLog, ProblemKind, looks_like_log, parse_log, parse_log_file
from harness.record_block import ParsedBlock, format_like, p_value, parse_writeup, printed_ok, std_mean
from harness.results import (OK, RUNS_FOLDER, Campaign, claim_arm, has_run, is_campaign, read_campaign_object,
                             read_run, recorded_log_path)
from harness.rules import ALPHA as DEFAULT_ALPHA
MAX_ALPHA = 0.5
_MS = Decimal("0.001")
# A stated arm that is not the claim but shares at least this fraction of its values with a group of logs is
# taken to be about those logs (and must then equal them); below it, it has no logs behind it.
_RELATED_FRACTION = 0.5
MAX_WRITEUP_BYTES = 16 << 20  # real write-ups are under 25 kB
MAX_FILES = 20000  # files looked at in one folder; the largest real record folder has under 100
_MAX_ARM_CHECKS = 40  # other arms reported one by one; the rest are summed up in one line
# The competition's targets, for a folder under its records/ tree whose write-up names none.
TRACK_TARGETS = {"track_1_short": 3.28, "track_2_medium": 2.92}

# Check names (stable: tests and users grep for them).
C_LOGS = "logs found"
C_LINKS = "no links out of the folder"
C_WRITEUP = "write-up readable"
C_EXCLUDED = "failed runs excluded"
C_OTHER_LOGS = "logs outside the claim"
C_FINAL = "every log reached its final step"
C_SCHEDULE = "same final step"
C_MONOTONIC = "steps and times monotonic"
C_STEP_AVG = "step_avg fits train_time"
C_DUPLICATES = "no run counted twice"
C_OMITTED = "no runs omitted"
C_SOURCE = "one code hash"
C_SCRIPT = "code hash = script file"
C_RECIPE = "no diagnostic switches"
C_BLOCK = "record block found"
C_LISTS = "block lists = logs"
C_PRINTED = "printed p/std/mean = recomputation"
C_TARGET = "target"
C_P = "p < alpha"
C_SEQUENTIAL = "stopping rule"

VERIFIED, NOT_VERIFIED, NO_CLAIM = "VERIFIED", "NOT VERIFIED", "NO CLAIM"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable / informational
    detail: str


@dataclass
class VerifyReport:
    path: Path
    checks: list[Check]
    runs: list[dict]
    claim_block_index: int | None
    blocks: list[str] = field(default_factory=list)  # where each stated arm is, e.g. "README.md line 29"
    claim_label: str | None = None  # the claim arm as the write-up names it (or where it is)
    n: int = 0  # finished runs behind the claim
    p: float | None = None  # p of those runs

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.ok is not None)

    @property
    def verdict(self) -> str:
        if self.ok:
            return VERIFIED
        return NO_CLAIM if self.claim_block_index is None and not self.blocks else NOT_VERIFIED

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is False]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def checks_named(self, prefix: str) -> list[Check]:
        return [c for c in self.checks if c.name.startswith(prefix)]


@dataclass
class _Entry:
    """One log (one run) and what we know about it."""

    label: str  # "run 3" or the path relative to the folder
    path: Path | None
    group: str  # arm name (campaign) or folder relative to PATH (competition)
    parsed: ParsedLog | None
    status: str = "ok"  # campaign run status; "ok" for competition logs
    reason: str | None = None  # why excluded / unreadable
    excluded: bool = False  # failed campaign runs: not part of any claim
    script_sha256: str | None = None  # the arm's script hash (campaign)
    content_sha256: str | None = None  # of the file's bytes: a copy under another name is the same run
    code_key: str | None = None  # the source with comments and whitespace removed, hashed

    @property
    def has_result(self) -> bool:
        p = self.parsed
        return bool(p and p.reached_final and p.final_val_loss is not None and math.isfinite(p.final_val_loss))

    @property
    def loss(self) -> Decimal | None:
        return _dec(self.parsed.final_val_loss_text) if self.has_result else None

    @property
    def time(self) -> Decimal | None:
        if not self.has_result or self.parsed.final_train_time_ms is None:
            return None
        return (_dec(repr(self.parsed.final_train_time_ms)) / 1000).quantize(_MS, ROUND_HALF_EVEN)


def _dec(text: str | None) -> Decimal | None:
    try:
        d = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return d if d.is_finite() else None


def _block_losses(b: ParsedBlock) -> list[Decimal]:
    return [d for d in (_dec(t) for t in b.losses_text or []) if d is not None]


def _block_times(b: ParsedBlock) -> list[Decimal]:
    return [d.quantize(_MS, ROUND_HALF_EVEN) for d in (_dec(t) for t in b.times_text or []) if d is not None]


def _fmt(values) -> str:
    return "[" + ", ".join(str(v.normalize()) if isinstance(v, Decimal) else str(v) for v in values) + "]"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def show(text) -> str:
    """A string from the folder, made safe to print: control characters (terminal escapes, bidi marks)
    written as \\x.. / \\u.... (Rich markup is never applied to it: it is printed as Text.)"""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


# ---------------------------------------------------------------------------------------------------------
# Code identity


_CODE_KEYS: dict[str, str] = {}


def code_key(source: str, exact_sha256: str) -> str:
    """The source's meaning: tokens without comments, blank lines or spacing (a comment edit or a reflowed
    line is the same code). Cached by the exact hash: a group of logs usually shares one source."""
    if exact_sha256 not in _CODE_KEYS:
        _CODE_KEYS[exact_sha256] = hashlib.sha256("\n".join(_meaning_lines(source)).encode()).hexdigest()
    return _CODE_KEYS[exact_sha256]


def _meaning_lines(source: str) -> list[str]:
    """One entry per logical line: its tokens joined by single spaces, indentation kept as a depth."""
    out: list[str] = []
    try:
        depth, current = 0, []
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.INDENT:
                depth += 1
                continue
            if tok.type == tokenize.DEDENT:
                depth -= 1
                continue
            if tok.type == tokenize.NEWLINE:
                if current:
                    out.append("  " * depth + " ".join(current))
                current = []
                continue
            current.append(tok.string)
        if current:
            out.append("  " * depth + " ".join(current))
        return out
    except (tokenize.TokenError, IndentationError, SyntaxError):
        # Not Python we can tokenize (a cut-off log): compare lines without trailing spaces and '#' comments.
        return [ln.split("#", 1)[0].rstrip() for ln in source.splitlines() if ln.split("#", 1)[0].strip()]


def _differing_lines(a: str, b: str, limit: int = 3) -> str:
    la, lb = _meaning_lines(a), _meaning_lines(b)
    shown = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        left = la[i1].strip() if i1 < i2 else "(nothing)"
        right = lb[j1].strip() if j1 < j2 else "(nothing)"
        at = next((k for k, (x, y) in enumerate(zip(left, right)) if x != y), min(len(left), len(right)))
        start = max(0, at - 30)  # show where the lines part, not only their beginnings
        shown.append(f"{left[start:start + 70]!r} vs {right[start:start + 70]!r}")
        if len(shown) >= limit:
            break
    return "; ".join(shown)


# ---------------------------------------------------------------------------------------------------------
# Reading the folder (bounded: no link followed, size caps, a file count cap)


@dataclass
class _Folder:
    logs: list[tuple[Path, str]] = field(default_factory=list)  # (path, relative name)
    writeups: list[tuple[Path, str]] = field(default_factory=list)
    scripts: list[tuple[Path, str]] = field(default_factory=list)
    links_out: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _scan(root: Path) -> _Folder:
    found = _Folder()
    real_root = os.path.realpath(root)
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                _note_link(found, full, os.path.normpath(os.path.join(rel_dir, d)), real_root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            count += 1
            if count > MAX_FILES:
                found.skipped.append(f"files beyond the first {MAX_FILES}")
                return found
            full = Path(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                _note_link(found, str(full), rel, real_root)
                continue
            low = name.lower()
            if low.endswith(".txt"):
                found.logs.append((full, rel))
            elif low.endswith(".md"):
                found.writeups.append((full, rel))
            elif low in ("train_gpt.py", "train_gpt2.py", "train_gpt_medium.py"):
                found.scripts.append((full, rel))
    return found


def _note_link(found: _Folder, full: str, rel: str, real_root: str) -> None:
    target = os.path.realpath(full)
    if os.path.commonpath([real_root, target]) != real_root:
        found.links_out.append(f"{rel} -> {target}")
    # a link inside the folder points at a file that is read under its own name


def _read_capped(path: Path, cap: int) -> bytes | str:
    """The file's bytes, or a reason why not (too large, unreadable)."""
    try:
        size = path.stat().st_size
        if size > cap:
            return f"{size} bytes, over the {cap}-byte cap"
        with open(path, "rb") as f:
            return f.read(cap + 1)
    except OSError as e:
        return f"cannot read ({e.strerror or e})"


def _competition_entries(found: _Folder) -> tuple[list[_Entry], list[str]]:
    entries, skipped = [], list(found.skipped)
    for f, rel in found.logs:
        data = _read_capped(f, MAX_LOG_BYTES)
        if isinstance(data, str):
            skipped.append(f"{rel} ({data})")
            continue
        if b"\x00" in data:
            skipped.append(f"{rel} (binary)")
            continue
        text = data.decode("utf-8", errors="replace")
        if not looks_like_log(text):
            continue
        parsed = parse_log(text)
        parent = os.path.dirname(rel)
        entry = _Entry(label=rel, path=f, group=parent or "(top)", parsed=parsed,
                       content_sha256=hashlib.sha256(data).hexdigest())
        _set_code_key(entry)
        entries.append(entry)
    return entries, skipped


def _set_code_key(e: _Entry) -> None:
    if e.parsed is not None and e.parsed.source is not None:
        e.code_key = code_key(e.parsed.source, e.parsed.source_sha256)


def _campaign_claim_arm(campaign: Campaign) -> str | None:
    """The arm a campaign's verdict judges (results.claim_arm); None for arms too malformed to say."""
    try:
        return claim_arm(campaign) if isinstance(campaign.arms, dict) and campaign.arms else None
    except (KeyError, TypeError, ValueError):
        return None


def _campaign_entries(root: Path, campaign: Campaign) -> list[_Entry]:
    runs_dir = root / RUNS_FOLDER
    run_dirs = [d for d in runs_dir.iterdir() if d.is_dir() and d.name.isdigit()] if runs_dir.is_dir() else []
    arms = campaign.arms if isinstance(campaign.arms, dict) else {}
    entries = []
    for d in sorted(run_dirs, key=lambda d: int(d.name)):
        label = f"run {d.name}"
        if not has_run(d):
            entries.append(_Entry(label, None, "?", None, status="unfinished", excluded=True,
                                  reason="no run.json (never finished)"))
            continue
        run = read_run(d)
        arm = str(run.arm or "main")
        status = str(run.status or "unknown")
        arm_info = arms.get(arm) if isinstance(arms.get(arm), dict) else {}
        log_path = recorded_log_path(d, run)
        entry = _Entry(label, log_path, arm, None, status=status, script_sha256=arm_info.get("script_sha256"))
        if status != OK:
            entry.excluded = True
            entry.reason = str(run.reason or status)
        if log_path is not None:
            try:
                entry.parsed = parse_log_file(log_path)
                entry.content_sha256 = hashlib.sha256(log_path.read_bytes()).hexdigest()
                _set_code_key(entry)
            except (HarnessError, OSError) as e:
                entry.reason = entry.reason or str(e)
        elif not entry.excluded:
            entry.reason = "no log file (logs/*.txt or output.txt)"
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------
# The write-up


def _load_arms(root: Path, writeups: list[tuple[Path, str]]) -> tuple[list[ParsedBlock], list[Check]]:
    def order(item):
        rel = item[1]
        n = os.path.basename(rel).lower()
        return (rel.count(os.sep), n != "readme.md", n != "statistics.md", n != "record.md", rel)

    arms, problems = [], []
    for path, rel in sorted(writeups, key=order):
        data = _read_capped(path, MAX_WRITEUP_BYTES)
        if isinstance(data, str):
            problems.append(f"{rel}: {data}")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{rel}: not UTF-8 text (read with replacement characters)")
            text = data.decode("utf-8", errors="replace")
        arms.extend(parse_writeup(text, source=rel))
    checks = [Check(C_WRITEUP, False, show(" | ".join(problems)))] if problems else []
    return arms, checks


_BASELINE_WORDS = re.compile(r"\b(?:baseline|previous|prior|master|old|retim\w*|reference|current wr|"
                             r"origin/master|h0)\b|baseline", re.I)
_CLAIM_WORDS = re.compile(r"\b(?:this[ _-]?pr|pr\d*|new|record|ours|candidate|proposed|submission)\b|this_pr", re.I)


def _role(arm: ParsedBlock) -> str:
    """'baseline', 'claim' or '' from the arm's own name, else the text before it, else its folder."""
    folder = os.path.dirname(arm.source)
    before = arm.context.rsplit(" / ", 1)[-1].strip("*_ ") if arm.context else ""
    # The line before counts when it introduces the arm ("Previous record (timed on same machine):",
    # "**This PR:**"), not when it is prose that mentions a previous record in passing.
    if not (before.endswith(":") or len(before) <= 60):
        before = ""
    for text in (arm.label or "", before, folder):
        if not text:
            continue
        if _BASELINE_WORDS.search(text):
            return "baseline"
        if _CLAIM_WORDS.search(text):
            return "claim"
    return ""


def _arm_name(arm: ParsedBlock) -> str:
    return f"{arm.label!r} ({arm.where})" if arm.label else arm.where


# ---------------------------------------------------------------------------------------------------------
# Matching arms to groups of logs


@dataclass
class _Group:
    name: str
    members: list[_Entry]
    losses: Counter
    times: Counter

    @staticmethod
    def of(name: str, members: list[_Entry]) -> "_Group":
        return _Group(name, members, Counter(e.loss for e in members if e.loss is not None),
                      Counter(e.time for e in members if e.time is not None))

    @property
    def finished(self) -> int:
        return sum(self.losses.values())


@dataclass
class _Match:
    group: _Group
    full: bool
    overlap: int
    size: int


def _match(arm: ParsedBlock, g: _Group) -> _Match:
    if arm.kind == "summary":
        same_n = arm.n == g.finished
        mean_ok = "loss_mean" not in arm.printed_text or _mean_matches(arm.printed_text["loss_mean"], g.losses)
        return _Match(g, same_n and mean_ok, int(same_n) + int(mean_ok), 2)
    bl, bt = Counter(_block_losses(arm)), Counter(_block_times(arm))
    overlap = sum((bl & g.losses).values()) + sum((bt & g.times).values())
    size = sum(bl.values()) + sum(bt.values())
    full = bool(size) and (arm.losses is None or bl == g.losses) and (arm.times is None or bt == g.times)
    return _Match(g, full and not arm.nonfinite, overlap, size)


def _mean_matches(printed: str, values: Counter) -> bool:
    vals = list(values.elements())
    if not vals:
        return False
    exact = float(sum(Fraction(v) for v in vals) / len(vals))
    return printed_ok(printed, exact, exact)


def _groups(entries: list[_Entry], campaign: bool) -> list[_Group]:
    included = [e for e in entries if not e.excluded]
    out: list[tuple[str, list[_Entry]]] = []
    if campaign:
        for arm in dict.fromkeys(e.group for e in included):
            out.append((f"arm {arm}", [e for e in included if e.group == arm]))
    else:
        out.append(("all logs", included))
        folders = list(dict.fromkeys(e.group for e in included))
        codes = list(dict.fromkeys(e.code_key for e in included))
        if len(folders) > 1:
            out += [(f"logs in {g}", [e for e in included if e.group == g]) for g in folders]
        if len(codes) > 1:
            out += [(f"logs with code {str(c)[:12]}", [e for e in included if e.code_key == c]) for c in codes]
            if len(folders) > 1:
                out += [(f"logs in {g} with code {str(c)[:12]}",
                         [e for e in included if e.group == g and e.code_key == c]) for g in folders for c in codes]
    seen, unique = set(), []
    for name, members in out:
        key = frozenset(id(e) for e in members)
        if members and key not in seen:
            seen.add(key)
            unique.append(_Group.of(name, members))
    return unique


def _best_match(arm: ParsedBlock, groups: list[_Group]) -> _Match | None:
    best = None
    # Groups run from the most natural grouping (all logs, by folder, by code): among equally good matches
    # the earlier one wins, so a crashed log kept beside the others stays in the claim.
    folder = os.path.dirname(arm.source)
    for g in groups:
        m = _match(arm, g)
        local = folder and all(e.label.startswith(folder + os.sep) for e in g.members)
        key = (m.full, m.overlap, bool(local))
        if best is None or key > best[0]:
            best = (key, m)
    return best[1] if best else None


def _about(arm: ParsedBlock, m: _Match) -> bool:
    """Is the arm about this group of logs? Equal, sharing most values, or listing every log of it (a write-up
    that lists more runs than the folder holds logs for)."""
    if m.full or (m.size and m.overlap / m.size >= _RELATED_FRACTION):
        return True
    return arm.kind != "summary" and bool(m.group.losses) and not (m.group.losses - Counter(_block_losses(arm)))


def _narrow(arm: ParsedBlock, m: _Match) -> list[_Entry]:
    """The group's logs the arm states: when the arm's runs are some of the group's finished logs, the rest are
    left out of the claim (and then named by the omitted-runs check); logs without a result stay (a crashed
    run beside the others fails the final-step check)."""
    if m.full or arm.kind == "summary" or arm.losses is None:
        return m.group.members
    want = Counter(zip(_block_losses(arm), _block_times(arm))) if arm.times is not None else Counter(_block_losses(arm))
    have = Counter((e.loss, e.time) if arm.times is not None else e.loss for e in m.group.members if e.has_result)
    if want - have:
        return m.group.members  # the arm states values no log gives: show the whole group's difference
    kept = []
    for e in m.group.members:
        key = (e.loss, e.time) if arm.times is not None else e.loss
        if not e.has_result:
            kept.append(e)
        elif want[key] > 0:
            want[key] -= 1
            kept.append(e)
    return kept


def _choose_claim(arms: list[ParsedBlock], best: dict[int, _Match | None], campaign: bool = False) -> int | None:
    usable = [i for i, a in enumerate(arms) if not a.malformed and (a.has_lists or a.n is not None)]
    if campaign and any(arms[i].kind == "block" for i in usable):
        usable = [i for i in usable if arms[i].kind == "block"]  # record.md's runs table restates the block
    if not usable:
        return None
    roles = {i: _role(arms[i]) for i in usable}
    if any(r != "baseline" for r in roles.values()):
        usable = [i for i in usable if roles[i] != "baseline"]  # never a baseline while another arm exists

    def rank(i: int):
        a, m = arms[i], best.get(i)
        return (bool(m and m.full), roles[i] == "claim", "p" in a.printed_text or a.target is not None,
                (m.overlap / max(m.size, 1)) if m else 0.0, a.kind != "summary", i)

    return max(usable, key=rank)


# ---------------------------------------------------------------------------------------------------------
# The checks: each a small function of what it checks, run in this order by verify_path.


def _check_final(members: list[_Entry]) -> Check:
    bad = []
    for e in members:
        p = e.parsed
        if p is None:
            bad.append(f"{e.label}: {e.reason or 'no log'}")
        elif not p.reached_final:
            cut = p.problems_of(ProblemKind.CUT_OFF) + p.problems_of(ProblemKind.NO_STEPS)
            bad.append(f"{e.label}: {cut[0].message if cut else 'no final line'}")
        elif not e.has_result:
            bad.append(f"{e.label}: non-finite final val_loss ({p.final_val_loss_text})")
    if bad:
        return Check(C_FINAL, False, f"{len(bad)} of {len(members)}: " + " | ".join(bad))
    return Check(C_FINAL, True, f"all {len(members)} logs end with a finite `step:N/N val_loss:` line")


def _check_schedule(members: list[_Entry], expected: int | None) -> Check:
    finals = Counter(e.parsed.final_step for e in members if e.has_result)
    if not finals:
        return Check(C_SCHEDULE, None, "no final lines to compare")
    common = expected if expected is not None else finals.most_common(1)[0][0]
    odd = [f"{e.label}: {e.parsed.final_step}" for e in members if e.has_result and e.parsed.final_step != common]
    where = " (the track's final_step)" if expected is not None else ""
    if odd:
        return Check(C_SCHEDULE, False, f"expected step {common}{where}; " + ", ".join(odd))
    return Check(C_SCHEDULE, True, f"every run ends at step {common}{where}")


def _check_monotonic(members: list[_Entry]) -> Check:
    bad = []
    for e in members:
        problems = e.parsed.problems_of(ProblemKind.NOT_MONOTONIC) if e.parsed else []
        if problems:
            bad.append(f"{e.label}: {problems[0].message}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    if bad:
        return Check(C_MONOTONIC, False, " | ".join(bad))
    return Check(C_MONOTONIC, True, "step numbers never go back, train_time never decreases")


def _check_step_avg(members: list[_Entry]) -> Check:
    bad = [f"{e.label}: {p.message}" for e in members if e.parsed for p in e.parsed.problems_of(ProblemKind.STEP_AVG)]
    if bad:
        return Check(C_STEP_AVG, False, " | ".join(bad))
    return Check(C_STEP_AVG, True, "every step line's step_avg is its train_time over the steps timed")


def _check_duplicates(members: list[_Entry]) -> Check:
    """The same run counted twice: identical bytes, one run id (the log's file name) twice, or an identical
    validation curve (at least 3 points of 4+ decimals: two real runs never share one)."""
    dups = []
    by_content: dict[str, _Entry] = {}
    by_id: dict[str, _Entry] = {}
    by_curve: dict[tuple, _Entry] = {}
    for e in members:
        if e.parsed is None:
            continue
        run_id = os.path.splitext(os.path.basename(e.label))[0] if e.path is not None and e.status == "ok" and not e.label.startswith("run ") else None
        curve = tuple(e.parsed.val_curve) if len(e.parsed.val_curve) >= 3 else None
        for key, table, why in ((e.content_sha256, by_content, "identical content"), (run_id, by_id, "the same run id"),
                                (curve, by_curve, "an identical val_loss curve")):
            if key is None:
                continue
            if key in table:
                dups.append(f"{e.label} = {table[key].label} ({why})")
                break
            table[key] = e
    if dups:
        return Check(C_DUPLICATES, False, " | ".join(dups))
    return Check(C_DUPLICATES, True, f"{len(members)} distinct runs (content, run id and val curve all differ)")


def _check_source(members: list[_Entry]) -> tuple[Check, str | None]:
    parsed = [e for e in members if e.parsed is not None]
    with_src = [e for e in parsed if e.parsed.source_sha256]
    if not with_src:
        return Check(C_SOURCE, None, "no log embeds its source (stdout captures): nothing to compare"), None
    exact = Counter(e.parsed.source_sha256 for e in with_src)
    common, n = exact.most_common(1)[0]
    ref = next(e for e in with_src if e.parsed.source_sha256 == common)
    keys = Counter(e.code_key for e in with_src)
    odd = [e for e in with_src if e.code_key != ref.code_key]
    missing = [f"{e.label} (no embedded source)" for e in parsed if not e.parsed.source_sha256]
    if odd or missing:
        shown = [f"{e.label} ({e.parsed.source_sha256[:12]}: {_differing_lines(ref.parsed.source, e.parsed.source)})"
                 for e in odd[:3]] + ([f"+{len(odd) - 3} more"] if len(odd) > 3 else [])
        return Check(C_SOURCE, False, f"{keys[ref.code_key]} logs share code {common[:12]}; odd ones out: "
                     + ", ".join(shown + missing)), common
    if len(exact) > 1:
        return Check(C_SOURCE, True, f"all {len(with_src)} logs embed the same code; {len(exact) - 1} differ from "
                     f"{common[:12]} only in comments or whitespace (the same code)"), common
    return Check(C_SOURCE, True, f"all {n} logs embed the same code (sha256 {common[:12]})"), common


def _file_hashes(path: Path) -> set[str]:
    data = _read_capped(path, MAX_LOG_BYTES)
    if isinstance(data, str):
        return set()
    # Logs are read with '\n' line endings; accept a script checked out with '\r\n' as the same code.
    return {hashlib.sha256(data).hexdigest(), hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()}


def _check_script_file(root: Path, scripts: list[tuple[Path, str]], common: str | None) -> Check | None:
    top = [(p, rel) for p, rel in scripts if os.sep not in rel]
    if not top:
        return None
    if common is None:
        return Check(C_SCRIPT, None, f"{top[0][1]} present but the logs embed no source")
    for s, rel in top:
        if common in _file_hashes(s):
            return Check(C_SCRIPT, True, f"the logs' code is {rel} (sha256 {common[:12]})")
    names = ", ".join(rel for _, rel in top)
    return Check(C_SCRIPT, False, f"the logs' code {common[:12]} is not {names}")


def _check_recipe(members: list[_Entry]) -> Check:
    """The same code can leave its recipe through environment switches (our short track's SPEEDRUN_FP8_HEAD=0
    and the like); the script says so in a `diagnostic:` line, which such a run cannot claim a record with."""
    bad = [f"{e.label}: {e.parsed.diagnostics[0][len('diagnostic:'):].strip()}"
           for e in members if e.parsed is not None and e.parsed.diagnostics]
    if bad:
        return Check(C_RECIPE, False, f"{len(bad)} of {len(members)} logs ran with switches off the recipe: "
                     + " | ".join(bad))
    return Check(C_RECIPE, True, f"no log reports a diagnostic switch ({len(members)} logs)")


def _check_arm_scripts(members: list[_Entry]) -> Check | None:
    known = [e for e in members if e.script_sha256 and e.parsed and e.parsed.source_sha256]
    if not known:
        return None
    bad = [f"{e.label} ({e.group})" for e in known if e.parsed.source_sha256 != e.script_sha256]
    if bad:
        return Check(C_SCRIPT, False, "embedded code differs from the arm's script recorded in campaign.json: "
                     + ", ".join(bad))
    return Check(C_SCRIPT, True, f"{len(known)} logs embed exactly the arm's script recorded in campaign.json")


def _check_omitted(entries: list[_Entry], members: list[_Entry], arms_matched: list[list[_Entry]]) -> Check:
    """Finished logs of the claim's code that no stated arm includes: runs left out of the claim."""
    keys = {e.code_key for e in members if e.code_key}
    if not keys:
        return Check(C_OMITTED, None, "the claim's logs embed no source: cannot tell which logs share its code")
    covered = {id(e) for group in arms_matched for e in group}
    left = [e for e in entries if not e.excluded and e.has_result and e.code_key in keys and id(e) not in covered]
    if left:
        return Check(C_OMITTED, False, f"{len(left)} finished log(s) run the claim's code but are in no stated arm: "
                     + ", ".join(e.label for e in left[:10]) + (" ..." if len(left) > 10 else ""))
    return Check(C_OMITTED, True, "every finished log of the claim's code is in a stated arm")


def _check_lists(arm: ParsedBlock, log_losses: list[Decimal], log_times: list[Decimal], group: str) -> Check:
    if arm.nonfinite:
        return Check(C_LISTS, False, f"the {arm.kind} lists hold non-finite values ({', '.join(arm.nonfinite[:3])}), "
                     "which no log gives")
    if arm.kind == "summary":
        n_logs = len(log_losses)
        problems = []
        if arm.n != n_logs:
            problems.append(f"it states n={arm.n}, {group} has {n_logs} finished logs")
        if "loss_mean" in arm.printed_text and not _mean_matches(arm.printed_text["loss_mean"], Counter(log_losses)):
            exact = float(sum(Fraction(v) for v in log_losses) / max(n_logs, 1)) if n_logs else math.nan
            problems.append(f"mean {arm.printed_text['loss_mean']}, the logs give {format_like(exact, arm.printed_text['loss_mean'])}")
        if problems:
            return Check(C_LISTS, False, f"the table row {arm.label!r} against {group}: " + "; ".join(problems))
        return Check(C_LISTS, True, f"the table row {arm.label!r} states n={arm.n} and the mean of {group}")
    bl, bt = _block_losses(arm), _block_times(arm)
    if arm.losses is None:
        return Check(C_LISTS, False, "the statistics lack the losses list")
    problems = []
    if Counter(bl) != Counter(log_losses):
        msg = "losses differ: " + _multiset_diff(bl, log_losses)
        decimals = max((-d.as_tuple().exponent for d in bl), default=4)
        q = Decimal(1).scaleb(-decimals)
        if Counter(bl) == Counter(v.quantize(q, ROUND_HALF_EVEN) for v in log_losses):
            msg += f" (the block holds the logs' values rounded to {decimals} decimals)"
        if len(bl) > len(log_losses):
            msg += f" ({len(bl)} runs listed, {len(log_losses)} finished logs here: the claim's logs are missing)"
        problems.append(msg)
    if arm.times is not None and Counter(bt) != Counter(log_times):
        problems.append("times (s, 3 decimals) differ: " + _multiset_diff(bt, log_times))
    if problems:
        return Check(C_LISTS, False, f"against {group}: " + " | ".join(problems))
    what = f"{len(bl)} losses" + (f" and {len(bt)} times" if arm.times is not None else " (no times list stated)")
    return Check(C_LISTS, True, f"{what} equal the final lines of {group}")


def _multiset_diff(block_vals: list[Decimal], log_vals: list[Decimal]) -> str:
    b, g = Counter(block_vals), Counter(log_vals)
    parts = []
    if b - g:
        parts.append(f"in the block but not in the logs: {_fmt(sorted((b - g).elements()))}")
    if g - b:
        parts.append(f"in the logs but not in the block: {_fmt(sorted((g - b).elements()))}")
    return "; ".join(parts)


def _exact_std_mean(values: list[Decimal]) -> tuple[float, float, float]:
    """Exact (unbiased std, population std, mean) of the decimal values: the reference a rounding is judged by."""
    if not values:
        return math.nan, math.nan, math.nan
    xs = [Fraction(v) for v in values]
    mean = sum(xs) / len(xs)
    ss = sum((x - mean) ** 2 for x in xs)
    sample = math.sqrt(ss / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return sample, math.sqrt(ss / len(xs)), float(mean)


def _recompute(log_losses: list[Decimal], log_times: list[Decimal], target: float) -> dict[str, float]:
    """The block's own expressions on the logs' values: scipy's one-sided t-test and float32 torch.std_mean."""
    losses, times = [float(v) for v in log_losses], [float(v) for v in log_times]
    out = {"p": p_value(losses, target)}
    for key, values in (("loss", losses), ("time", times)):
        if values:
            out[f"{key}_std"], out[f"{key}_mean"], _ = std_mean(values)
    return out


def _printed_problems(arm: ParsedBlock, values: dict[str, float], log_losses: list[Decimal],
                      log_times: list[Decimal]) -> list[str]:
    exact = {}
    for key, vals in (("loss", log_losses), ("time", log_times)):
        sample, population, mean = _exact_std_mean(vals)
        exact[f"{key}_std"], exact[f"{key}_mean"], exact[f"{key}_pstd"] = sample, mean, population
        exact[f"{key}_scale"] = float(max((abs(v) for v in vals), default=0))
    out = []
    for name, printed in arm.printed_text.items():
        if name in ("time_mean_ms", "time_mean_s"):
            scale = 1000 if name.endswith("ms") else 1
            mean = exact["time_mean"] * scale if log_times else math.nan
            if not printed_ok(printed, mean, mean):
                out.append(f"printed time mean {printed}{name[-2:].strip('_')}, the logs give {format_like(mean, printed)}")
            continue
        if name not in values:
            continue
        key = name.split("_")[0]
        # p: any correct rounding of it (tables round by hand); std/mean: torch's float32 print, or a correct
        # rounding of the exact value within float32's error
        reference = values["p"] if name == "p" else exact.get(name)
        ok = printed_ok(printed, values[name], reference, exact.get(f"{key}_scale", 0.0))
        if not ok and arm.std_ddof_free and name.endswith("_std"):
            ok = printed_ok(printed, exact[f"{key}_pstd"], exact[f"{key}_pstd"], exact[f"{key}_scale"])
        if not ok:
            out.append(f"printed {name} {printed}, the logs give {format_like(values[name], printed)}")
    return out


def _check_printed(arm: ParsedBlock, values: dict[str, float], log_losses, log_times) -> Check:
    if not arm.printed_text:
        return Check(C_PRINTED, None, "the statistics print no p, std or mean")
    if not log_losses:
        return Check(C_PRINTED, False, "no log values to recompute the printed numbers from")
    bad = _printed_problems(arm, values, log_losses, log_times)
    if bad:
        return Check(C_PRINTED, False, " | ".join(bad))
    shown = ", ".join(f"{k}={v}" for k, v in arm.printed_text.items())
    return Check(C_PRINTED, True, f"recomputed from the logs: {shown}")


def _check_other_arm(bi: int, arm: ParsedBlock, m: _Match | None, target: float | None) -> Check:
    name = f"block {bi + 1} ({arm.where})"
    label = f"{arm.label!r}: " if arm.label else ""
    if arm.malformed:
        return Check(name, False, f"{label}malformed, not checked: {arm.malformed}")
    if m is not None and m.full:
        losses = [e.loss for e in m.group.members if e.loss is not None]
        times = [e.time for e in m.group.members if e.time is not None]
        values = _recompute(losses, times, target if target is not None else math.inf)
        if target is None:
            values.pop("p")
        bad = _printed_problems(arm, values, losses, times)
        if bad:
            return Check(name, False, f"{label}matches {m.group.name} ({len(m.group.members)} logs) but " + " | ".join(bad))
        p = f"; p={values['p']:.4f}" if target is not None and len(losses) > 1 else ""
        return Check(name, True, f"{label}matches {m.group.name} ({len(m.group.members)} logs{p})")
    if m is not None and m.size and m.overlap / m.size >= _RELATED_FRACTION and arm.kind != "summary":
        return Check(name, False, f"{label}shares {m.overlap} of {m.size} values with {m.group.name} but is not equal to it")
    return Check(name, None, f"{label}no logs behind it here (e.g. a previous record's numbers): not checked")


def _check_target(block_t, track_t, given_t, used: float, from_path: bool) -> Check:
    others = [(n, t) for n, t in (("campaign.json", track_t), ("--target", given_t)) if t is not None]
    if block_t is None:
        src = others[0][0] if others else ("the competition track of the folder" if from_path else "?")
        return Check(C_TARGET, True, f"{used} (from {src}; the statistics have no t-test line)")
    bad = [f"{n} says {t}" for n, t in others if not math.isclose(float(t), float(block_t), abs_tol=1e-12)]
    if bad:
        return Check(C_TARGET, False, f"the block tests against {block_t} but " + ", ".join(bad))
    return Check(C_TARGET, True, f"{used} (from the block's ttest_1samp line)")


def _as_number(value, what: str, root: Path) -> float:
    """campaign.json's track target or alpha as a number; anything else is a malformed campaign."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{root / 'campaign.json'}: track {what} must be a number, got {value!r}") from None


def check_alpha(alpha: float, where: str = "--alpha") -> float:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 < alpha <= MAX_ALPHA):
        raise HarnessError(f"{where} must be in (0, {MAX_ALPHA}], got {alpha}")
    return float(alpha)


def _path_target(root: Path) -> float | None:
    for part in reversed(root.resolve().parts):
        if part in TRACK_TARGETS:
            return TRACK_TARGETS[part]
    return None


# ---------------------------------------------------------------------------------------------------------


def verify_path(path, target: float | None = None, alpha: float | None = None) -> VerifyReport:
    """Recompute and check everything; bad input (missing path, no logs) raises HarnessError.

    target: used when neither the statistics (ttest_1samp(losses, T, ...)) nor campaign.json names one; for a
    folder under the competition's records/track_* the track's target.
    alpha: default campaign.json's track alpha, else 0.01; must be in (0, 0.5].
    """
    if alpha is not None:
        check_alpha(alpha)
    root = Path(path)
    if not root.exists():
        raise HarnessError(f"{show(root)}: no such file or folder")
    if not root.is_dir():
        raise HarnessError(f"{show(root)}: is a file; give the campaign or record folder that holds the logs")

    campaign = read_campaign_object(root) if is_campaign(root) else None
    track = campaign.track if campaign is not None and isinstance(campaign.track, dict) else {}

    found = _scan(root)
    skipped: list[str] = []
    if campaign is not None:
        entries = _campaign_entries(root, campaign)
        if not entries:
            raise HarnessError(f"{show(root)}: the campaign has no runs yet (runs/<k>/ is empty)")
        found.writeups = [(p, rel) for p, rel in found.writeups if rel == "record.md"]
    else:
        entries, skipped = _competition_entries(found)
        if not entries:
            raise HarnessError(f"{show(root)}: no logs found (no .txt file with `step:N/T ... train_time:` lines)")

    arms, writeup_checks = _load_arms(root, found.writeups)
    groups = _groups(entries, campaign is not None)
    best = {i: _best_match(a, groups) for i, a in enumerate(arms) if not a.malformed}
    claim_bi = _choose_claim(arms, best, campaign is not None)
    claim = arms[claim_bi] if claim_bi is not None else None
    m = best.get(claim_bi) if claim is not None else None
    if claim is not None and m is not None and _about(claim, m):
        claim_group, members = m.group.name, _narrow(claim, m)
    elif claim is not None:
        claim_group, members = "no logs", []
    elif campaign is not None:
        main = _campaign_claim_arm(campaign)
        g = next((g for g in groups if g.name == f"arm {main}"), groups[0] if groups else None)
        claim_group, members = (g.name, g.members) if g else ("all logs", [])
    else:
        claim_group, members = (groups[0].name, groups[0].members) if groups else ("all logs", [])

    checks: list[Check] = []
    included = [e for e in entries if not e.excluded]
    excluded = [e for e in entries if e.excluded]

    # -- which logs
    desc = f"{len(entries)} {'runs' if campaign is not None else 'logs'}"
    if claim is not None:
        desc += f"; the claim ({_arm_name(claim)}) is {claim_group} ({len(members)})"
    if skipped:
        desc += f"; skipped {', '.join(skipped)}"
    checks.append(Check(C_LOGS, True, desc))
    if found.links_out:
        checks.append(Check(C_LINKS, False, "links pointing out of the folder (not followed): " + ", ".join(found.links_out)))
    checks.extend(writeup_checks)
    if excluded:
        reasons = "; ".join(f"{e.label}: {e.reason}" for e in excluded)
        checks.append(Check(C_EXCLUDED, None, f"{len(excluded)} failed runs excluded ({reasons})"))
    outside = [e for e in included if all(e is not x for x in members)]
    if outside:
        checks.append(Check(C_OTHER_LOGS, None, f"{len(outside)} logs not part of the claim: "
                            + ", ".join(e.label for e in outside[:20]) + (" ..." if len(outside) > 20 else "")))

    # -- the logs of the claim
    if claim is not None and not members:
        checks.append(Check(C_FINAL, False, f"no logs here hold the claim's values ({_arm_name(claim)}): "
                            "the claim's logs are missing"))
    else:
        checks.append(_check_final(members))
    checks.append(_check_schedule(members, track.get("final_step") if campaign is not None else None))
    checks.append(_check_monotonic(members))
    checks.append(_check_step_avg(members))
    checks.append(_check_duplicates(members))
    source_check, common = _check_source(members)
    checks.append(source_check)
    script_check = (_check_arm_scripts(members) if campaign is not None
                    else _check_script_file(root, found.scripts, common))
    if script_check is not None:
        checks.append(script_check)
    checks.append(_check_recipe(members))
    if campaign is None and claim is not None:
        matched = [best[i].group.members for i in best if best[i] is not None and best[i].full]
        checks.append(_check_omitted(entries, members, matched + [members]))

    # -- the statistics
    log_losses = [e.loss for e in members if e.loss is not None]
    log_times = [e.time for e in members if e.time is not None]
    block_target = claim.target if claim is not None else None
    track_target = track.get("target") if campaign is not None else None
    path_target = _path_target(root) if campaign is None else None
    use_target = next((t for t in (block_target, track_target, target, path_target) if t is not None), None)
    if claim is None:
        md = "record.md" if campaign is not None else "README.md, statistics.md or another .md"
        checks.append(Check(C_BLOCK, False, f"no statistics (a block with `losses = [...]`, a table or a list) in {md}"))
    else:
        others = len(arms) - 1
        checks.append(Check(C_BLOCK, True, f"{len(arms)} stated arm(s); the claim is {_arm_name(claim)}"
                            + (f" ({others} other)" if others else "")))
        checks.append(_check_lists(claim, log_losses, log_times, claim_group))
        shown = 0
        quiet = 0
        for bi, a in enumerate(arms):
            if bi == claim_bi:
                continue
            c = _check_other_arm(bi, a, best.get(bi), use_target)
            if shown < _MAX_ARM_CHECKS or c.ok is False:
                checks.append(c)
                shown += 1
            else:
                quiet += 1
        if quiet:
            checks.append(Check("other arms", None, f"{quiet} more arms with no logs behind them, not listed"))

    if use_target is None:
        raise HarnessError("no target loss: the statistics have no ttest_1samp(losses, T, ...) line and the folder "
                           "does not name one; give --target (3.28 short track, 2.92 medium)")
    use_target = _as_number(use_target, "target", root)
    checks.append(_check_target(block_target, track_target, target, use_target,
                                from_path=block_target is None and target is None and track_target is None))
    alpha = check_alpha(_as_number(alpha if alpha is not None else track.get("alpha", DEFAULT_ALPHA), "alpha", root),
                        "--alpha" if alpha is not None else f"{root / 'campaign.json'}: track alpha")

    values = _recompute(log_losses, log_times, use_target)
    if claim is not None:
        checks.append(_check_printed(claim, values, log_losses, log_times))
    n = len(log_losses)
    p = None
    if n < 2:
        checks.append(Check(C_P, False, f"the t-test needs at least 2 finished runs, the claim has {n}"))
    else:
        p = values["p"]
        detail = (f"p={p:.4f} {'<' if p < alpha else '>='} {alpha} (one-sided t-test of {n} final losses "
                  f"against {use_target}; mean {values['loss_mean']:.4f}"
                  + (f", time mean {values['time_mean']:.4f} s)" if "time_mean" in values else ")"))
        checks.append(Check(C_P, bool(p < alpha), detail))
    if campaign is not None and campaign.until_significant:
        checks.append(Check(C_SEQUENTIAL, None, "runs were added until significant: the error-controlled "
                            "decision is the sequential test in record.md, not this plain t-test"))

    runs = [_run_row(e, members) for e in entries]
    return VerifyReport(path=root, checks=checks, runs=runs, claim_block_index=claim_bi,
                        blocks=[a.where for a in arms], claim_label=_arm_name(claim) if claim else None, n=n, p=p)


def _run_row(e: _Entry, members: list[_Entry]) -> dict:
    p = e.parsed
    return {
        "label": e.label,
        "path": str(e.path) if e.path else None,
        "group": e.group,
        "status": e.status,
        "excluded": e.excluded,
        "in_claim": any(e is m for m in members),
        "reason": e.reason,
        "final_step": p.final_step if p else None,
        "total_steps": p.total_steps if p else None,
        "val_loss": p.final_val_loss if p else None,
        "val_loss_text": p.final_val_loss_text if p else None,
        "time_s": float(e.time) if e.time is not None else None,
        "source_sha256": p.source_sha256 if p else None,
        "problems": [x.message for x in p.issues if x.kind in _SERIOUS] if p else ([e.reason] if e.reason else []),
    }


# Log problems worth a note in the runs table (stray lines are not).
_SERIOUS = (ProblemKind.CUT_OFF, ProblemKind.NO_STEPS, ProblemKind.NON_FINITE, ProblemKind.NOT_MONOTONIC,
            ProblemKind.STEP_AVG, ProblemKind.SEVERAL_FINALS, ProblemKind.NOT_UTF8)
