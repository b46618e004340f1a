"""record.md and the plots of a campaign. Everything is recomputed from the files under the campaign folder,
so `speedrun report DIR` can regenerate it at any time. The "Timing and Validation" part is made of the
sections the campaign's kind names (results.KINDS); the console summary prints the same sections."""

from __future__ import annotations

from pathlib import Path

from harness.comparison import comparison_markdown
from harness.compile_cache import describe_config
from harness.extract import RECORD_KINDS, describe_code
from harness.fingerprint import env_markdown
from harness.fsio import write_text_atomic
from harness.markdown import md_text
from harness.plots import make_campaign_plots
from harness.record_block import render_block
from harness.record_pins import LABELS
from harness.results import (BASELINE, CANDIDATE, Campaign, Run, arm_series, claim_arm, failed_runs, kind_of,
                             load_campaign, load_runs, ok_runs)
from harness.scaling import scaling_markdown
from harness.sequential import sequential_markdown
from harness.telemetry import telemetry_markdown
from harness.verdict import verdict


def _fence(text: str) -> str:
    return "```\n" + text + "```\n"


TIMING_HEADING = "## Timing and Validation"


def record_markdown(campaign_dir: str | Path) -> str:
    d = Path(campaign_dir)
    campaign = load_campaign(d)
    runs = load_runs(d)
    track = campaign.track
    target, alpha = float(track["target"]), float(track["alpha"])
    n_sched = len(campaign.schedule)
    lines = [
        f"# {track['name']} campaign {campaign.id}",
        "",
        f"- verdict: {verdict(campaign, runs)[1]}",
        f"- status: **{_or_question(campaign.status)}**"
        + (f" ({campaign.stop_reason})" if campaign.stop_reason else ""),
        f"- runs: {len(ok_runs(runs))} ok, {len(failed_runs(runs))} failed, {n_sched} scheduled",
        f"- target: mean final val loss < {target} (one-sided t-test, p < {alpha})",
        f"- created: {_or_question(campaign.created)}",
        "",
    ]
    lines += timing_lines(d, campaign, runs)
    lines += ["## Runs", "", _runs_table_md(runs), ""]
    if any(isinstance(a, dict) and a.get("code") for a in campaign.arms.values()):
        lines += [arms_markdown(campaign), ""]  # where each arm's code came from, its pins and downloads
    cache_md = _compile_cache_md(campaign, runs)
    if cache_md:
        lines += ["## Compile cache", "", cache_md, ""]
    if campaign.environment:
        lines += [env_markdown(campaign.environment), ""]
    tele = _telemetry_md(runs)
    if tele:
        lines += ["## Telemetry", "", tele, ""]
    plots = sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


def timing_lines(campaign_dir: Path, campaign: Campaign, runs: list[Run]) -> list[str]:
    """The "Timing and Validation" part, as lines: the heading, then the sections of the campaign's kind."""
    lines = [TIMING_HEADING, ""]
    for name in kind_of(campaign).sections:
        lines += SECTIONS[name](campaign_dir, campaign, runs)
    return lines


def _claim_block(campaign_dir: Path, campaign: Campaign, runs: list[Run]) -> list[str]:
    """The claim arm's record block, and under it the sequential line after --until-significant."""
    target, alpha = float(campaign.track["target"]), float(campaign.track["alpha"])
    arm = claim_arm(campaign)
    losses, times = arm_series(runs, arm)
    if not losses:  # in a comparison the baseline's block below may still have runs
        whose = "candidate run" if arm == CANDIDATE else "run"
        return [f"No {whose} finished successfully: there is no block to report.\n"]
    lines = [_fence(render_block(losses, times, target))]
    if campaign.until_significant:  # the loss claim's anytime-valid line (a comparison adds its time line)
        lines.append(_sequential_line(losses, target, alpha))
    return lines


def _baseline_block(campaign_dir: Path, campaign: Campaign, runs: list[Run]) -> list[str]:
    """A comparison: the previous record's block (no p: it makes no claim), then the comparison."""
    target = float(campaign.track["target"])
    b_losses, b_times = arm_series(runs, BASELINE)
    lines = ["Previous record (timed on same machine):", ""]
    lines.append(_fence(render_block(b_losses, b_times, target, with_p=False)) if b_losses
                 else "No baseline run finished successfully.\n")
    lines.append(comparison_markdown(campaign_dir) + "\n")
    return lines


def _count_blocks(campaign_dir: Path, campaign: Campaign, runs: list[Run]) -> list[str]:
    """A scaling campaign: one block per GPU count."""
    target = float(campaign.track["target"])
    lines = []
    for arm, spec in campaign.arms.items():
        a_losses, a_times = arm_series(runs, arm)
        n = int(spec["nproc"])
        lines += [f"{arm} ({n} process{'es' if n > 1 else ''}):", ""]
        lines.append(_fence(render_block(a_losses, a_times, target)) if a_losses
                     else "No run of this count finished successfully.\n")
    return lines


def _scaling_tables(campaign_dir: Path, campaign: Campaign, runs: list[Run]) -> list[str]:
    return [scaling_markdown(campaign_dir)]


# The sections a kind names (results.KINDS), in the order it names them.
SECTIONS = {"claim_block": _claim_block, "baseline_block": _baseline_block, "count_blocks": _count_blocks,
            "scaling_tables": _scaling_tables}


def _sequential_line(losses: list[float], target: float, alpha: float) -> str:
    return sequential_markdown(losses, target, alpha) + "\n"


def _telemetry_md(runs: list[Run]) -> str:
    summaries = [(str(r.index), r.telemetry) for r in runs if r.telemetry]
    return telemetry_markdown(summaries) if summaries else ""


def _runs_table_md(runs: list[Run]) -> str:
    rows = ["| run | arm | seed | status | final step | val loss | train time (s) | compile + warm-up (s) | cache "
            "| wall (s) | reason |",
            "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in runs:
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r.index, or_blank(r.arm), or_blank(r.seed), or_blank(r.status),
            _or_dash(r.final_step), number_text(r.final_val_loss, 4), number_text(r.train_time_s, 3),
            number_text(r.compile_warmup_s, 1), cache_state(r), number_text(r.wall_s, 1),
            (r.reason or "").replace("|", "/")))
    return "\n".join(rows)


def _grown_warm_runs(runs: list[Run], arm: str) -> list[str]:
    """`run 3 (+256 files)` for each warm run of the arm that added files to its cache folder: a warm start that
    still compiled something (a kernel whose cache entry misses every run keeps the start slow)."""
    out = []
    for r in runs:
        cache = r.compile_cache
        if r.arm != arm or not isinstance(cache, dict) or cache.get("state") != "warm":
            continue
        before, after = cache.get("entries_before"), cache.get("entries_after")
        if isinstance(before, int) and isinstance(after, int) and after > before:
            out.append(f"run {r.index} (+{after - before} files)")
    return out


def _compile_cache_md(campaign: Campaign, runs: list[Run]) -> str:
    """Each arm's compile cache folder, the warm runs that still added to it (run.json), and the Triton autotune
    configs its runs share (campaign.json)."""
    arms = campaign.compile_cache
    if not isinstance(arms, dict) or not arms:
        return ""
    lines = []
    for arm, rec in arms.items():
        if not isinstance(rec, dict):
            continue
        lines.append(f"- {arm}: " + (f"`{rec.get('dir')}` (key {rec.get('digest')})" if rec.get("enabled")
                                      else "off (--no-cache)"))
        grown = _grown_warm_runs(runs, arm)
        if grown:
            lines.append(f"  - warm runs that still added files to it (compiled again): {', '.join(grown)}")
    tuned = [(arm, kernel, e) for arm, kernels in (campaign.triton_autotune or {}).items()
             if isinstance(kernels, dict) for kernel, entries in kernels.items() for e in entries]
    if tuned:
        lines += ["", "Triton autotune (kept on disk, used by every run after the first):", "",
                  "| arm | kernel | tuning key | chosen config | timing (ms) |", "| --- | --- | --- | --- | --- |"]
        for arm, kernel, e in tuned:
            cfg = describe_config(e["config"]) if isinstance(e.get("config"), dict) else e.get("problem", "?")
            lines.append(f"| {arm} | {kernel} | {e.get('key')} | {cfg} | {e.get('timing')} |".replace("\n", " "))
    return "\n".join(lines)


def cache_state(run: Run) -> str:
    """cold / warm (the compile cache folder was empty / had entries before the run), off, or - (older runs)."""
    cache = run.compile_cache
    if not isinstance(cache, dict):
        return "-"
    return str(cache.get("state") or "-") if cache.get("enabled") else "off"


def _or_dash(v) -> str:
    return "-" if v is None else str(v)


def _or_question(v) -> str:
    return "?" if v is None else str(v)


def or_blank(v) -> str:
    """A field shown as text: empty when not recorded (None)."""
    return "" if v is None else str(v)


def number_text(v, digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)  # a hand-edited run.json: shown as is


def write_record(campaign_dir: str | Path) -> Path:
    """(Re)write plots and record.md of a campaign from its files."""
    d = Path(campaign_dir)
    make_campaign_plots(d)
    return write_text_atomic(d / "record.md", record_markdown(d))


def arms_markdown(campaign: Campaign) -> str:
    """record.md's section on each arm: where its code came from, its files' hashes, its pins, downloads."""
    lines = ["## Code of each arm", ""]
    for name, arm in (campaign.arms or {}).items():
        code = arm.get("code") or {}
        lines.append(f"- **{name}**: {md_text(describe_code(code))}; script sha256 `{arm.get('script_sha256')}`")
        if code.get("kind") in RECORD_KINDS:
            lines.append(f"  - log `{md_text(code.get('log'))}` (sha256 `{code.get('log_sha256')}`), embedded source "
                         f"sha256 `{code.get('source_sha256')}`" + (f"; {md_text(code['note'])}" if code.get("note") else ""))
            for fname, digest in (code.get("files") or {}).items():
                lines.append(f"  - from the log: `{md_text(fname)}` sha256 `{digest}`")
            for fname, extra in (code.get("extra_files") or {}).items():
                lines.append(f"  - **not from the log**: `{md_text(fname)}` sha256 `{extra.get('sha256')}`, "
                             f"placed from `{md_text(extra.get('from'))}`")
        pins = arm.get("pins") or {}
        if pins:
            lines.append("  - environment pins (its log): " + ", ".join(f"{LABELS.get(k, k)} {md_text(v)}"
                                                                          for k, v in pins.items()))
            diffs = arm.get("pin_differences") or []
            lines.append("  - this node: " + ("matches them" if not diffs else "differs in " + "; ".join(map(md_text, diffs))))
        for d in arm.get("downloads") or []:
            lines.append(f"  - download: {md_text(d.get('line', ''))}")
    return "\n".join(lines) + "\n"
