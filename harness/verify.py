"""`speedrun verify PATH`: recompute a record's claim from its logs and check it, check by check.

PATH is one of our campaign folders (campaign.json, runs/<k>/run.json, runs/<k>/logs/*.txt, record.md) or a
folder of competition logs (*.txt, possibly in subfolders, with the statistics block in a README.md or any
other .md at its top). Every number is taken from the logs themselves: the official result of a run is the
val_loss and train_time of its final `step:N/N val_loss:` line (DESIGN.md "The log protocol").

A write-up can hold several blocks (seed 001 also quotes the previous record's numbers, whose logs live
elsewhere). The block whose lists equal the values of a group of logs is the claim; a block that matches no
logs here is reported, not failed. When no block matches, the block closest to some group of logs (ties: the
one with a t-test) is taken as the claim and its mismatch is shown.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, ROUND_HALF_EVEN
from pathlib import Path

from harness.campaign import run_log_path
from harness.errors import HarnessError
from harness.fsio import read_json
from harness.logs import ParsedLog, looks_like_log, parse_log, parse_log_file
from harness.record_block import format_like, p_value, same_printed, std_mean

DEFAULT_ALPHA = 0.01
_MS = Decimal("0.001")
# A block that is not the claim but shares at least this fraction of its values with a group of logs is
# taken to be about those logs (and must then equal them); below it, it has no logs behind it.
_RELATED_FRACTION = 0.5

# Check names (stable: tests and users grep for them).
C_LOGS = "logs found"
C_EXCLUDED = "failed runs excluded"
C_OTHER_LOGS = "logs outside the claim"
C_FINAL = "every log reached its final step"
C_SCHEDULE = "same final step"
C_MONOTONIC = "steps and times monotonic"
C_SOURCE = "one code hash"
C_SCRIPT = "code hash = script file"
C_RECIPE = "no diagnostic switches"
C_BLOCK = "record block found"
C_LISTS = "block lists = logs"
C_PRINTED = "printed p/std/mean = recomputation"
C_TARGET = "target"
C_P = "p < alpha"
C_SEQUENTIAL = "stopping rule"


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
    blocks: list[str] = field(default_factory=list)  # where each block is, e.g. "README.md line 29"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.ok is not None)

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


def _block_losses(values: list[float] | None) -> list[Decimal]:
    # repr gives back the number as written in the block (3.278 for a written 3.278; trailing zeros dropped
    # by the author compare equal as Decimals: 3.278 == 3.2780).
    return [d for d in (_dec(repr(float(v))) for v in values or []) if d is not None]


def _block_times(values: list[float] | None) -> list[Decimal]:
    return [d.quantize(_MS, ROUND_HALF_EVEN) for d in (_dec(repr(float(v))) for v in values or []) if d is not None]


def _fmt(values) -> str:
    return "[" + ", ".join(str(v.normalize()) if isinstance(v, Decimal) else str(v) for v in values) + "]"


# ---------------------------------------------------------------------------------------------------------
# Collecting logs


def _read_text_or_none(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    return data.decode("utf-8", errors="replace")


def _competition_entries(root: Path) -> tuple[list[_Entry], list[str]]:
    entries, skipped = [], []
    for f in sorted(root.rglob("*.txt")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        text = _read_text_or_none(f)
        if text is None:
            skipped.append(f"{rel} (unreadable or binary)")
            continue
        if not looks_like_log(text):
            continue
        parsed = parse_log_file(f) if "\ufffd" in text else parse_log(text)
        group = str(rel.parent) if str(rel.parent) != "." else "(top)"
        entries.append(_Entry(label=str(rel), path=f, group=group, parsed=parsed))
    return entries, skipped


def _run_log_path(run_dir: Path, run: dict) -> Path | None:
    named = run.get("log_file")
    if isinstance(named, str) and (run_dir / named).is_file():
        return run_dir / named
    found = run_log_path(run_dir)
    return found if found.is_file() else None


def _campaign_entries(root: Path, campaign: dict) -> list[_Entry]:
    runs_dir = root / "runs"
    run_dirs = [d for d in runs_dir.iterdir() if d.is_dir() and d.name.isdigit()] if runs_dir.is_dir() else []
    arms = campaign.get("arms") if isinstance(campaign.get("arms"), dict) else {}
    entries = []
    for d in sorted(run_dirs, key=lambda d: int(d.name)):
        label = f"run {d.name}"
        if not (d / "run.json").is_file():
            entries.append(_Entry(label, None, "?", None, status="unfinished", excluded=True,
                                  reason="no run.json (never finished)"))
            continue
        run = read_json(d / "run.json")
        if not isinstance(run, dict):
            raise HarnessError(f"{d / 'run.json'}: not a JSON object")
        arm = str(run.get("arm") or "main")
        status = str(run.get("status") or "unknown")
        arm_info = arms.get(arm) if isinstance(arms.get(arm), dict) else {}
        log_path = _run_log_path(d, run)
        entry = _Entry(label, log_path, arm, None, status=status, script_sha256=arm_info.get("script_sha256"))
        if status != "ok":
            entry.excluded = True
            entry.reason = str(run.get("reason") or status)
        if log_path is not None:
            try:
                entry.parsed = parse_log_file(log_path)
            except HarnessError as e:
                entry.reason = entry.reason or str(e)
        elif not entry.excluded:
            entry.reason = "no log file (logs/*.txt or output.txt)"
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------
# Blocks


def _md_files(root: Path) -> list[Path]:
    def order(p: Path):
        n = p.name.lower()
        return (n != "readme.md", n != "statistics.md", n != "record.md", n)

    return sorted((p for p in root.glob("*.md") if p.is_file()), key=order)


def _load_blocks(root: Path) -> tuple[list, list[str]]:
    from harness.record_block import parse_blocks

    blocks, where = [], []
    for md in _md_files(root):
        try:
            text = md.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise HarnessError(f"{md}: not UTF-8 text, cannot read its block") from None
        except OSError as e:
            raise HarnessError(f"{md}: cannot read ({e.strerror or e})") from None
        for b in parse_blocks(text, source=md.name):
            blocks.append(b)
            where.append(f"{md.name} line {getattr(b, 'line', 0) or '?'}")
    return blocks, where


@dataclass
class _Match:
    block: int
    group: str
    members: list[_Entry]
    loss_equal: bool
    time_equal: bool
    overlap: int  # values the block and the group share (multiset intersection, losses + times)
    size: int  # values in the block

    @property
    def full(self) -> bool:
        return self.loss_equal and self.time_equal


def _match(bi: int, block, group: str, members: list[_Entry]) -> _Match:
    bl, bt = Counter(_block_losses(block.losses)), Counter(_block_times(block.times))
    gl = Counter(e.loss for e in members if e.loss is not None)
    gt = Counter(e.time for e in members if e.time is not None)
    overlap = sum((bl & gl).values()) + sum((bt & gt).values())
    size = sum(bl.values()) + sum(bt.values())
    has_lists = block.losses is not None and block.times is not None
    return _Match(bi, group, members, has_lists and bl == gl, has_lists and bt == gt, overlap, size)


def _groups(entries: list[_Entry], campaign: bool) -> list[tuple[str, list[_Entry]]]:
    included = [e for e in entries if not e.excluded]
    out: list[tuple[str, list[_Entry]]] = []
    if campaign:
        for arm in dict.fromkeys(e.group for e in included):
            out.append((f"arm {arm}", [e for e in included if e.group == arm]))
        return out
    out.append(("all logs", included))
    folders = list(dict.fromkeys(e.group for e in included))
    if len(folders) > 1:
        out += [(f"logs in {g}", [e for e in included if e.group == g]) for g in folders]
    hashes = list(dict.fromkeys(e.parsed.source_sha256 for e in included if e.parsed))
    if len(hashes) > 1:
        out += [(f"logs with code {str(h)[:12]}", [e for e in included if e.parsed and e.parsed.source_sha256 == h])
                for h in hashes]
    seen, unique = set(), []
    for name, members in out:
        key = frozenset(id(e) for e in members)
        if members and key not in seen:
            seen.add(key)
            unique.append((name, members))
    return unique


def _choose_claim(blocks, groups) -> tuple[int | None, str | None, list[_Entry] | None, dict[int, _Match]]:
    """The claim block and its group, and for every block its best match."""
    best: dict[int, _Match] = {}
    for bi, b in enumerate(blocks):
        # `groups` runs from the most natural grouping (all logs, then by folder, then by code hash): among
        # equally good matches the earlier one wins, so a crashed log kept beside the others stays in the claim.
        for name, members in groups:
            m = _match(bi, b, name, members)
            cur = best.get(bi)
            if cur is None or (m.full, m.overlap) > (cur.full, cur.overlap):
                best[bi] = m
    if not best:
        return None, None, None, best

    def rank(bi: int):
        m = best[bi]
        return (m.full, m.overlap / max(m.size, 1), blocks[bi].target is not None, len(m.members), -bi)

    claim = max(best, key=rank)
    return claim, best[claim].group, best[claim].members, best


# ---------------------------------------------------------------------------------------------------------
# Recomputation


def _as_number(value, what: str, root: Path) -> float:
    """campaign.json's track target or alpha as a number; anything else is a malformed campaign."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{root / 'campaign.json'}: track {what} must be a number, got {value!r}") from None


def _recompute(losses: list[float], times: list[float], target: float) -> dict[str, float]:
    """The block's own expressions on the logs' values: scipy's one-sided t-test and float32 torch.std_mean."""
    out = {"p": p_value(losses, target)}
    for key, values in (("loss", losses), ("time", times)):
        if values:
            out[f"{key}_std"], out[f"{key}_mean"], _ = std_mean(values)
    return out


def _printed_vs(block, values: dict[str, float]) -> list[str]:
    out = []
    for name, printed in (getattr(block, "printed_text", None) or {}).items():
        if name not in values:
            continue
        want = format_like(values[name], printed)
        if not same_printed(want, printed):  # nan (a one-run block: no std, no p) matches its nan text
            out.append(f"printed {name} {printed}, the logs give {want}")
    return out


def _multiset_diff(block_vals: list[Decimal], log_vals: list[Decimal]) -> str:
    b, g = Counter(block_vals), Counter(log_vals)
    parts = []
    if b - g:
        parts.append(f"in the block but not in the logs: {_fmt(sorted((b - g).elements()))}")
    if g - b:
        parts.append(f"in the logs but not in the block: {_fmt(sorted((g - b).elements()))}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# The checks


def _check_final(members: list[_Entry]) -> Check:
    bad = []
    for e in members:
        p = e.parsed
        if p is None:
            bad.append(f"{e.label}: {e.reason or 'no log'}")
        elif not p.reached_final:
            cut = next((s for s in p.problems if s.startswith(("cut off", "no step lines"))), "no final line")
            bad.append(f"{e.label}: {cut}")
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
        if e.parsed is None:
            continue
        problems = e.parsed.monotonic_problems  # parse_log computed them
        if problems:
            bad.append(f"{e.label}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    if bad:
        return Check(C_MONOTONIC, False, " | ".join(bad))
    return Check(C_MONOTONIC, True, "step numbers never go back, train_time never decreases")


def _check_source(members: list[_Entry]) -> tuple[Check, str | None]:
    parsed = [e for e in members if e.parsed is not None]
    with_src = [e for e in parsed if e.parsed.source_sha256]
    if not with_src:
        return Check(C_SOURCE, None, "no log embeds its source (stdout captures): nothing to compare"), None
    counts = Counter(e.parsed.source_sha256 for e in with_src)
    common, n = counts.most_common(1)[0]
    odd = [f"{e.label} ({e.parsed.source_sha256[:12]})" for e in with_src if e.parsed.source_sha256 != common]
    odd += [f"{e.label} (no embedded source)" for e in parsed if not e.parsed.source_sha256]
    if odd:
        return Check(C_SOURCE, False, f"{n} logs share code {common[:12]}; odd ones out: " + ", ".join(odd)), common
    return Check(C_SOURCE, True, f"all {n} logs embed the same code (sha256 {common[:12]})"), common


def _file_hashes(path: Path) -> set[str]:
    import hashlib

    data = path.read_bytes()
    # Logs are read with '\n' line endings; accept a script checked out with '\r\n' as the same code.
    return {hashlib.sha256(data).hexdigest(), hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()}


def _check_script_file(root: Path, common: str | None) -> Check | None:
    exact = root / "train_gpt.py"
    scripts = [exact] if exact.is_file() else sorted(root.glob("train_gpt*.py"))
    if not scripts:
        return None
    if common is None:
        return Check(C_SCRIPT, None, f"{scripts[0].name} present but the logs embed no source")
    for s in scripts:
        if common in _file_hashes(s):
            return Check(C_SCRIPT, True, f"the logs' code is {s.name} (sha256 {common[:12]})")
    names = ", ".join(s.name for s in scripts)
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


def verify_path(path, target: float | None = None, alpha: float | None = None) -> VerifyReport:
    """Recompute and check everything; bad input (missing path, no logs, unreadable block) raises HarnessError.

    target: used when neither the block (ttest_1samp(losses, T, ...)) nor campaign.json names one.
    alpha: default campaign.json's track alpha, else 0.01.
    """
    root = Path(path)
    if not root.exists():
        raise HarnessError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise HarnessError(f"{root}: is a file; give the campaign or record folder that holds the logs")

    campaign = read_json(root / "campaign.json") if (root / "campaign.json").is_file() else None
    if campaign is not None and not isinstance(campaign, dict):
        raise HarnessError(f"{root / 'campaign.json'}: not a JSON object")
    track = (campaign or {}).get("track") if isinstance((campaign or {}).get("track"), dict) else {}

    skipped: list[str] = []
    if campaign is not None:
        entries = _campaign_entries(root, campaign)
        if not entries:
            raise HarnessError(f"{root}: the campaign has no runs yet (runs/<k>/ is empty)")
    else:
        entries, skipped = _competition_entries(root)
        if not entries:
            raise HarnessError(f"{root}: no logs found (no .txt file with `step:N/T ... train_time:` lines)")

    blocks, where = _load_blocks(root)
    groups = _groups(entries, campaign is not None)
    claim_bi, claim_group, members, best = _choose_claim(blocks, groups)
    if members is None:
        if campaign is not None:
            arms = list(campaign.get("arms") or {})
            main = "candidate" if "candidate" in arms else (arms[0] if arms else None)
            claim_group = f"arm {main}"
            members = next((m for n, m in groups if n == claim_group), groups[0][1] if groups else [])
        else:
            claim_group, members = groups[0] if groups else ("all logs", [])

    checks: list[Check] = []
    included = [e for e in entries if not e.excluded]
    excluded = [e for e in entries if e.excluded]

    # -- which logs
    desc = f"{len(entries)} {'runs' if campaign is not None else 'logs'}"
    if claim_bi is not None:
        desc += f"; the claim ({where[claim_bi]}) is {claim_group} ({len(members)})"
    if skipped:
        desc += f"; skipped {', '.join(skipped)}"
    checks.append(Check(C_LOGS, True, desc))
    if excluded:
        reasons = "; ".join(f"{e.label}: {e.reason}" for e in excluded)
        checks.append(Check(C_EXCLUDED, None, f"{len(excluded)} failed runs excluded ({reasons})"))
    outside = [e for e in included if all(e is not m for m in members)]
    if outside:
        checks.append(Check(C_OTHER_LOGS, None, f"{len(outside)} logs not part of the claim: "
                            + ", ".join(e.label for e in outside)))

    # -- the logs of the claim
    checks.append(_check_final(members))
    checks.append(_check_schedule(members, track.get("final_step") if campaign is not None else None))
    checks.append(_check_monotonic(members))
    source_check, common = _check_source(members)
    checks.append(source_check)
    script_check = _check_arm_scripts(members) if campaign is not None else _check_script_file(root, common)
    if script_check is not None:
        checks.append(script_check)
    checks.append(_check_recipe(members))

    # -- the block
    log_losses = [e.loss for e in members if e.loss is not None]
    log_times = [e.time for e in members if e.time is not None]
    claim = blocks[claim_bi] if claim_bi is not None else None
    if claim is None:
        md = "record.md" if campaign is not None else "README.md or another .md"
        checks.append(Check(C_BLOCK, False, f"no code block with `losses = [...]` / `times = [...]` in {md}"))
    else:
        others = len(blocks) - 1
        checks.append(Check(C_BLOCK, True, f"{len(blocks)} block(s); the claim is {where[claim_bi]}"
                            + (f" ({others} other)" if others else "")))
        checks.append(_check_lists(claim, log_losses, log_times, claim_group))
        for bi, b in enumerate(blocks):
            if bi != claim_bi:
                checks.append(_check_other_block(bi, where[bi], best[bi]))

    # -- target, printed numbers, p
    block_target = claim.target if claim is not None else None
    track_target = track.get("target") if campaign is not None else None
    use_target = block_target if block_target is not None else (track_target if track_target is not None else target)
    if use_target is None:
        raise HarnessError("no target loss: the block has no ttest_1samp(losses, T, ...) line and the folder does "
                           "not name one; give --target (3.28 short track, 2.92 medium)")
    use_target = _as_number(use_target, "target", root)
    checks.append(_check_target(block_target, track_target, target, use_target))
    alpha = _as_number(alpha if alpha is not None else track.get("alpha", DEFAULT_ALPHA), "alpha", root)

    values = _recompute([float(v) for v in log_losses], [float(v) for v in log_times], use_target)
    if claim is not None:
        checks.append(_check_printed(claim, values, bool(log_losses)))
    n = len(log_losses)
    if n < 2:
        checks.append(Check(C_P, False, f"the t-test needs at least 2 finished runs, the claim has {n}"))
    else:
        p = values["p"]
        detail = (f"p={p:.4f} {'<' if p < alpha else '>='} {alpha} (one-sided t-test of {n} final losses "
                  f"against {use_target}; mean {values['loss_mean']:.4f}, time mean {values['time_mean']:.4f} s)")
        checks.append(Check(C_P, bool(p < alpha), detail))
    if campaign is not None and campaign.get("until_significant"):
        checks.append(Check(C_SEQUENTIAL, None, "runs were added until significant: the error-controlled "
                            "decision is the sequential test in record.md, not this plain t-test"))

    runs = [_run_row(e, members) for e in entries]
    return VerifyReport(path=root, checks=checks, runs=runs, claim_block_index=claim_bi, blocks=where)


def _check_lists(block, log_losses: list[Decimal], log_times: list[Decimal], group: str) -> Check:
    bl, bt = _block_losses(block.losses), _block_times(block.times)
    if block.losses is None or block.times is None:
        return Check(C_LISTS, False, "the block lacks its " + ("losses" if block.losses is None else "times") + " list")
    problems = []
    if Counter(bl) != Counter(log_losses):
        msg = "losses differ: " + _multiset_diff(bl, log_losses)
        decimals = max((-d.as_tuple().exponent for d in bl), default=4)
        q = Decimal(1).scaleb(-decimals)
        if Counter(bl) == Counter(v.quantize(q, ROUND_HALF_EVEN) for v in log_losses):
            msg += f" (the block holds the logs' values rounded to {decimals} decimals)"
        problems.append(msg)
    if Counter(bt) != Counter(log_times):
        problems.append("times (s, 3 decimals) differ: " + _multiset_diff(bt, log_times))
    if problems:
        return Check(C_LISTS, False, f"against {group}: " + " | ".join(problems))
    return Check(C_LISTS, True, f"{len(bl)} losses and {len(bt)} times equal the final lines of {group}")


def _check_other_block(bi: int, where: str, m: _Match) -> Check:
    name = f"block {bi + 1} ({where})"
    if m.full:
        return Check(name, True, f"matches {m.group} ({len(m.members)} logs)")
    if m.size and m.overlap / m.size >= _RELATED_FRACTION:
        return Check(name, False, f"shares {m.overlap} of {m.size} values with {m.group} but is not equal to it")
    return Check(name, None, "no logs behind it here (e.g. a previous record's numbers): not checked")


def _check_target(block_t, track_t, given_t, used: float) -> Check:
    others = [(n, t) for n, t in (("campaign.json", track_t), ("--target", given_t)) if t is not None]
    if block_t is None:
        src = others[0][0] if others else "?"
        return Check(C_TARGET, True, f"{used} (from {src}; the block has no t-test line)")
    bad = [f"{n} says {t}" for n, t in others if not math.isclose(float(t), float(block_t), abs_tol=1e-12)]
    if bad:
        return Check(C_TARGET, False, f"the block tests against {block_t} but " + ", ".join(bad))
    return Check(C_TARGET, True, f"{used} (from the block's ttest_1samp line)")


def _check_printed(block, values: dict[str, float], have_logs: bool) -> Check:
    if not getattr(block, "printed_text", None):
        return Check(C_PRINTED, None, "the block prints no p, std or mean comments")
    if not have_logs:
        from harness.record_block import printed_matches

        bad = printed_matches(block)
        return Check(C_PRINTED, False, "no log values to recompute from"
                     + (f"; against its own lists: {' | '.join(bad)}" if bad else ""))
    bad = _printed_vs(block, values)
    if bad:
        return Check(C_PRINTED, False, " | ".join(bad))
    shown = ", ".join(f"{k}={v}" for k, v in block.printed_text.items())
    return Check(C_PRINTED, True, f"recomputed from the logs: {shown}")


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
        "problems": list(p.problems) if p else ([e.reason] if e.reason else []),
    }


# ---------------------------------------------------------------------------------------------------------
# CLI


def cmd_verify(path: str, target: float | None, alpha: float | None) -> int:
    from rich.console import Console
    from rich.table import Table

    report = verify_path(path, target=target, alpha=alpha)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped into a file or CI log: do not fold the details
    t = Table(title=f"verify {report.path}", show_lines=False)
    t.add_column("check", no_wrap=True)
    t.add_column("result", no_wrap=True)
    t.add_column("detail", overflow="fold")
    for c in report.checks:
        result = "[green]PASS[/]" if c.ok else ("[red]FAIL[/]" if c.ok is False else "[dim]n.a.[/]")
        t.add_row(_esc(c.name), result, _esc(c.detail))
    console.print(t)

    r = Table(title="runs", show_lines=False)
    for col in ("run", "group", "status", "claim", "final step", "val_loss", "time s", "code"):
        r.add_column(col, no_wrap=True)
    r.add_column("notes", overflow="fold")
    for row in report.runs:
        notes = row["reason"] or next((s for s in row["problems"] if s.startswith(_SERIOUS)), "")
        step = f"{row['final_step']}/{row['total_steps']}" if row["final_step"] is not None else (
            f"-/{row['total_steps']}" if row["total_steps"] else "-")
        r.add_row(
            _esc(row["label"]), _esc(row["group"]), row["status"], "yes" if row["in_claim"] else "no", step,
            row["val_loss_text"] or "-", f"{row['time_s']:.3f}" if row["time_s"] is not None else "-",
            (row["source_sha256"] or "-")[:8], _esc(notes[:120]),
        )
    console.print(r)
    failed = [c for c in report.checks if c.ok is False]
    if report.ok:
        console.print(f"[green]VERIFIED[/]: all {sum(c.ok is True for c in report.checks)} checks pass")
        return 0
    console.print(f"[red]NOT VERIFIED[/]: {len(failed)} check(s) fail: " + _esc(", ".join(c.name for c in failed)))
    return 1


# Log problems worth a note in the runs table (stray lines are not).
_SERIOUS = ("cut off", "no step lines", "non-finite", "line ", "not valid UTF-8")


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))
