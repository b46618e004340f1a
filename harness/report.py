"""record.md, the console summary, and the plots of a campaign. Everything is recomputed from the files
under the campaign folder, so `speedrun report DIR` can regenerate it at any time."""

from __future__ import annotations

from pathlib import Path

from harness.campaign import load_campaign, load_runs
from harness.compare import comparison_markdown
from harness.env import env_markdown
from harness.fsio import write_text_atomic
from harness.plots import make_campaign_plots
from harness.record_env import arms_markdown
from harness.record_block import render_block
from harness.sequential import sequential_markdown
from harness.telemetry import telemetry_markdown


def ok_runs(runs: list[dict], arm: str | None = None) -> list[dict]:
    return [r for r in runs if r.get("status") == "ok" and (arm is None or r.get("arm") == arm)]


def arm_series(runs: list[dict], arm: str | None = None) -> tuple[list[float], list[float]]:
    good = ok_runs(runs, arm)
    return [r["final_val_loss"] for r in good], [r["train_time_s"] for r in good]


def claim_arm(campaign: dict) -> str:
    """The arm whose numbers are the claim: the candidate in a comparison, the largest GPU count in a scaling
    campaign (the configuration a record would run), the only arm otherwise."""
    arms = list(campaign["arms"])
    if "candidate" in arms:
        return "candidate"
    if campaign.get("kind") == "scaling":
        return max(arms, key=lambda a: int(campaign["arms"][a]["nproc"]))
    return arms[0]


def verdict(campaign: dict, runs: list[dict]) -> tuple[bool, str]:
    """(passed, the one line): PASS or FAIL of the claim arm's mean final loss against the target at alpha,
    and why. The fixed-N t-test of the record block (on the numbers as the block prints them); after
    --until-significant the sequential test's anytime-valid p, the only one valid after looking every run."""
    from harness.record_block import block_numbers
    from harness.sequential import LOSS_PRIOR, anytime_p_value

    track = campaign["track"]
    target, alpha = float(track["target"]), float(track["alpha"])
    arm = claim_arm(campaign)
    who = {"compare": "the candidate's claim", "scaling": f"the claim of {arm}"}.get(campaign.get("kind"), "")
    losses, times = arm_series(runs, arm)
    n = len(losses)
    failed = sum(1 for r in runs if r.get("arm") == arm and r.get("status") == "failed")
    notes = [who] if who else []
    if failed:
        notes.append(f"{failed} failed run(s) not counted")
    tail = f"; {', '.join(notes)}" if notes else ""
    if n == 0:
        return False, f"FAIL: no finished run to test against the target {target!r}{tail}"
    mean = sum(losses) / n
    about = f"mean {mean:.4f} over {n} run{'s' if n != 1 else ''}, target {target!r}{tail}"
    if campaign.get("until_significant"):
        p, test = anytime_p_value(losses, target, LOSS_PRIOR), "anytime-valid p"
    else:
        p, test = block_numbers(losses, times, target).p, "p"
    if p != p:  # nan: one run has no spread, so no t-test
        return False, f"FAIL: {n} run gives no p-value, the t-test needs at least 2 ({about})"
    # the record rule is p < alpha; the sequential test stops with success at E >= 1/alpha, i.e. p <= alpha
    passed = p <= alpha if campaign.get("until_significant") else p < alpha
    if passed:
        return True, f"PASS: {test}={p:.4f} {'<=' if p == alpha else '<'} alpha {alpha:g} ({about})"
    return False, f"FAIL: {test}={p:.4f} {'>' if campaign.get('until_significant') else '>='} alpha {alpha:g} ({about})"


def _fence(text: str) -> str:
    return "```\n" + text + "```\n"


def record_markdown(campaign_dir: str | Path) -> str:
    d = Path(campaign_dir)
    campaign = load_campaign(d)
    runs = load_runs(d)
    track = campaign["track"]
    target, alpha = float(track["target"]), float(track["alpha"])
    main = claim_arm(campaign)
    n_sched = len(campaign["schedule"])
    failed = [r for r in runs if r.get("status") == "failed"]
    lines = [
        f"# {track['name']} campaign {campaign['id']}",
        "",
        f"- verdict: {verdict(campaign, runs)[1]}",
        f"- status: **{campaign.get('status', '?')}**"
        + (f" ({campaign['stop_reason']})" if campaign.get("stop_reason") else ""),
        f"- runs: {len(ok_runs(runs))} ok, {len(failed)} failed, {n_sched} scheduled",
        f"- target: mean final val loss < {target} (one-sided t-test, p < {alpha})",
        f"- created: {campaign.get('created', '?')}",
        "",
        "## Timing and Validation",
        "",
    ]
    losses, times = arm_series(runs, main)
    if campaign.get("kind") == "scaling":  # no claim: one block per GPU count, then the scaling tables
        from harness.scaling import scaling_markdown

        for arm, spec in campaign["arms"].items():
            a_losses, a_times = arm_series(runs, arm)
            n = int(spec["nproc"])
            lines += [f"{arm} ({n} process{'es' if n > 1 else ''}):", ""]
            lines.append(_fence(render_block(a_losses, a_times, target)) if a_losses
                         else "No run of this count finished successfully.\n")
        lines.append(scaling_markdown(d))
    elif losses:
        lines.append(_fence(render_block(losses, times, target)))
        seq = campaign.get("until_significant")
        if seq:  # the loss claim's own anytime-valid line (a comparison adds its time line below)
            lines.append(_sequential_line(losses, target, alpha))
    else:
        lines.append("No run finished successfully: there is no block to report.\n")
    if "baseline" in campaign["arms"]:
        b_losses, b_times = arm_series(runs, "baseline")
        lines += ["Previous record (timed on same machine):", ""]
        lines.append(_fence(render_block(b_losses, b_times, target, with_p=False)) if b_losses
                     else "No baseline run finished successfully.\n")
        lines.append(comparison_markdown(d) + "\n")
    lines += ["## Runs", "", _runs_table_md(runs), ""]
    if any(isinstance(a, dict) and a.get("code") for a in campaign["arms"].values()):
        lines += [arms_markdown(campaign), ""]  # where each arm's code came from, its pins and downloads
    cache_md = _compile_cache_md(campaign)
    if cache_md:
        lines += ["## Compile cache", "", cache_md, ""]
    if campaign.get("environment"):
        lines += [env_markdown(campaign["environment"]), ""]
    tele = _telemetry_md(runs)
    if tele:
        lines += ["## Telemetry", "", tele, ""]
    plots = sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _sequential_line(losses: list[float], target: float, alpha: float) -> str:
    return sequential_markdown(losses, target, alpha) + "\n"


def _telemetry_md(runs: list[dict]) -> str:
    summaries = [(str(r["index"]), r["telemetry"]) for r in runs if r.get("telemetry")]
    return telemetry_markdown(summaries) if summaries else ""


def _runs_table_md(runs: list[dict]) -> str:
    rows = ["| run | arm | seed | status | final step | val loss | train time (s) | compile + warm-up (s) | cache "
            "| wall (s) | reason |",
            "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in runs:
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["index"], r.get("arm", ""), r.get("seed", ""), r.get("status", ""),
            _or_dash(r.get("final_step")), _num(r.get("final_val_loss"), 4), _num(r.get("train_time_s"), 3),
            _num(r.get("compile_warmup_s"), 1), cache_state(r), _num(r.get("wall_s"), 1),
            (r.get("reason") or "").replace("|", "/")))
    return "\n".join(rows)


def _compile_cache_md(campaign: dict) -> str:
    """Each arm's compile cache folder, and the Triton autotune configs its runs share (campaign.json)."""
    from harness.compile_cache import describe_config

    arms = campaign.get("compile_cache")
    if not isinstance(arms, dict) or not arms:
        return ""
    lines = []
    for arm, rec in arms.items():
        if not isinstance(rec, dict):
            continue
        lines.append(f"- {arm}: " + (f"`{rec.get('dir')}` (key {rec.get('digest')})" if rec.get("enabled")
                                      else "off (--no-cache)"))
    tuned = [(arm, kernel, e) for arm, kernels in (campaign.get("triton_autotune") or {}).items()
             if isinstance(kernels, dict) for kernel, entries in kernels.items() for e in entries]
    if tuned:
        lines += ["", "Triton autotune (kept on disk, used by every run after the first):", "",
                  "| arm | kernel | tuning key | chosen config | timing (ms) |", "| --- | --- | --- | --- | --- |"]
        for arm, kernel, e in tuned:
            cfg = describe_config(e["config"]) if isinstance(e.get("config"), dict) else e.get("problem", "?")
            lines.append(f"| {arm} | {kernel} | {e.get('key')} | {cfg} | {e.get('timing')} |".replace("\n", " "))
    return "\n".join(lines)


def cache_state(run: dict) -> str:
    """cold / warm (the compile cache folder was empty / had entries before the run), off, or - (older runs)."""
    cache = run.get("compile_cache")
    if not isinstance(cache, dict):
        return "-"
    return str(cache.get("state") or "-") if cache.get("enabled") else "off"


def _or_dash(v) -> str:
    return "-" if v is None else str(v)


def _num(v, digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)  # a hand-edited run.json: shown as is


def write_record(campaign_dir: str | Path) -> Path:
    """(Re)write plots and record.md of a campaign from its files."""
    d = Path(campaign_dir)
    make_campaign_plots(d)
    return write_text_atomic(d / "record.md", record_markdown(d))


def print_summary(campaign_dir: str | Path, console=None) -> None:
    """The end-of-campaign table and the block, on the console."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    d = Path(campaign_dir)
    campaign = load_campaign(d)
    runs = load_runs(d)
    # Every cell and the title are Text, never markup: names, statuses and reasons come from files and runs.
    table = Table(title=Text(f"{campaign['track']['name']} campaign {campaign['id']} ({campaign.get('status')})"))
    for col, justify in (("run", "right"), ("arm", "left"), ("seed", "right"), ("status", "left"),
                         ("val loss", "right"), ("train time (s)", "right"), ("compile (s)", "right"),
                         ("wall (s)", "right"), ("reason", "left")):
        table.add_column(col, justify=justify)
    for r in runs:
        status = Text(str(r.get("status")), style="green" if r.get("status") == "ok" else "red")
        table.add_row(Text(str(r["index"])), Text(str(r.get("arm", ""))), Text(str(r.get("seed", ""))), status,
                      Text(_num(r.get("final_val_loss"), 4)), Text(_num(r.get("train_time_s"), 3)),
                      Text(f"{_num(r.get('compile_warmup_s'), 1)} {cache_state(r)}"), Text(_num(r.get("wall_s"), 1)),
                      Text(str(r.get("reason") or "")))
    console.print(table)
    md = (d / "record.md").read_text(encoding="utf-8") if (d / "record.md").exists() else record_markdown(d)
    # The block(s) and what follows them up to the runs table: what a contributor pastes.
    start = md.find("## Timing and Validation")
    end = md.find("## Runs")
    # Plain print, never wrapped to the terminal width: the block must paste back as valid Python.
    console.file.flush()
    print(md[start:end].strip())
    print(f"\nresults: {d}  (record.md there)")


def cmd_report(campaign_dir: str) -> int:
    from harness.fsio import remove_stale_tmp
    from harness.lock import campaign_lock

    load_campaign(campaign_dir)  # a folder that is not a campaign gets no lock file
    with campaign_lock(campaign_dir):  # record.md and plots are rewritten: not beside a running campaign
        remove_stale_tmp(campaign_dir)
        write_record(campaign_dir)
    print_summary(campaign_dir)
    print(verdict(load_campaign(campaign_dir), load_runs(campaign_dir))[1])  # the same last line as the campaign's
    return 0
