"""A scaling campaign (`speedrun scaling TRACK --gpus 1,2,...`): the same script on 1, 2, ... K GPUs of this
node, interleaved; its schedule, its numbers and its section of record.md.

What a multi-GPU contributor asks before a record attempt: does the script give the same loss on K GPUs as
on one with accumulation (it should: the data of a step and the math are the same), and how does the step time
scale? One campaign holds an arm per GPU count (`gpus1`, `gpus2`, ...); round r runs every arm once with seed
r, in alternating order (1 2 4, 4 2 1, ...) so a drift of the node does not favour one count.

The report per arm: steady step time per stage (the short track prints `stage:NAME ... steady_step_ms:X`
lines; for other scripts, the median of the step-to-step train_time differences after the first five steps),
speedup and efficiency against the smallest count, and the final val loss with its paired difference to the
smallest count (same seed, same data). Per-GPU telemetry and the straggler check are in the runs' telemetry
section of record.md, as for any campaign.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from harness.errors import HarnessError
from harness.logs import parse_log
from harness.results import Run, load_campaign, load_runs, ok_runs, read_run_log
from harness.step_times import stage_lines

ARM_PREFIX = "gpus"
WARMUP_STEPS = 5  # steps left out of a generic steady-state time (compile, allocator, first data loads)


def parse_gpu_counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: distinct positive counts, in increasing order."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HarnessError(f"--gpus takes comma-separated GPU counts like 1,2,4; got {text!r}") from None
    if not counts or any(k < 1 for k in counts):
        raise HarnessError(f"--gpus takes positive GPU counts like 1,2,4; got {text!r}")
    if len(set(counts)) != len(counts):
        raise HarnessError(f"--gpus lists a count twice: {text!r}")
    if len(counts) < 2:
        raise HarnessError("--gpus needs at least two counts to compare (e.g. 1,2)")
    return sorted(counts)


def arm_name(k: int) -> str:
    return f"{ARM_PREFIX}{k}"


def scaling_schedule(counts: list[int], runs: int) -> tuple[list[str], list[int]]:
    """(arm names, seeds): `runs` rounds, each running every count once with the round's seed; the order
    alternates (forward, backward) so every count sits at the same mean position."""
    if runs < 1:
        raise HarnessError(f"--runs must be at least 1, got {runs}")
    schedule, seeds = [], []
    for r in range(runs):
        order = counts if r % 2 == 0 else counts[::-1]
        schedule += [arm_name(k) for k in order]
        seeds += [r] * len(order)
    return schedule, seeds


def stage_step_times(log_text: str) -> dict[str, float]:
    """Steady step time (ms) per stage from a log: the script's own `stage:` lines when it prints them, else
    {'all': median step-to-step train_time difference after the first WARMUP_STEPS steps}."""
    stages = {name: steady_ms for name, _, _, steady_ms in stage_lines(log_text)}
    if stages:
        return stages
    steps = [s for s in parse_log(log_text).steps if s.val_loss is None]  # training step lines only
    deltas = [b.train_time_ms - a.train_time_ms for a, b in zip(steps, steps[1:])
              if b.step == a.step + 1 and a.step >= WARMUP_STEPS]
    return {"all": statistics.median(deltas)} if deltas else {}


def _run_stage_times(campaign_dir: Path, run: Run) -> dict[str, float]:
    text = read_run_log(campaign_dir, run)
    return stage_step_times(text) if text is not None else {}


def scaling_table(campaign_dir: str | Path) -> dict:
    """The numbers of the report: per count, per stage, the median steady ms over ok runs; final losses by
    seed; train times."""
    d = Path(campaign_dir)
    campaign = load_campaign(d)
    counts = sorted(int(a["nproc"]) for a in campaign.arms.values())
    runs = ok_runs(load_runs(d))
    per_count = {}
    for k in counts:
        mine = [r for r in runs if r.arm == arm_name(k)]
        times: dict[str, list[float]] = {}
        for r in mine:
            for stage, ms in _run_stage_times(d, r).items():
                times.setdefault(stage, []).append(ms)
        per_count[k] = {
            "runs": len(mine),
            "stage_ms": {s: statistics.median(v) for s, v in times.items()},
            "loss_by_seed": {r.seed: r.final_val_loss for r in mine},
            "train_time_s": [r.train_time_s for r in mine],
        }
    unit, units = ("GPU", "GPUs") if campaign.track.get("uses_gpu", True) else ("process", "processes")
    return {"counts": counts, "per_count": per_count, "unit": unit, "units": units}


def _count(k: int, t: dict) -> str:
    """'1 GPU', '2 GPUs', '2 processes'."""
    return f"{k} {t['unit'] if k == 1 else t['units']}"


def scaling_markdown(campaign_dir: str | Path) -> str:
    t = scaling_table(campaign_dir)
    counts, per = t["counts"], t["per_count"]
    base = counts[0]
    stages = list(dict.fromkeys(s for k in counts for s in per[k]["stage_ms"]))
    lines = ["## Scaling", ""]
    if not stages:
        lines.append("No finished run printed step times: nothing to scale.")
        return "\n".join(lines) + "\n"
    lines.append("| stage | " + " | ".join(f"{_count(k, t)} (ms)" for k in counts) + " | "
                 + " | ".join(f"speedup {k}/{base} (efficiency)" for k in counts[1:]) + " |")
    lines.append("|" + " --- |" * (2 * len(counts)))
    for s in stages:
        ms = [per[k]["stage_ms"].get(s) for k in counts]
        cells = [f"{v:.2f}" if v is not None else "-" for v in ms]
        for k, v in zip(counts[1:], ms[1:]):
            speedup = ms[0] / v if v and ms[0] else None
            cells.append(f"{speedup:.2f}× ({speedup / (k / base):.0%})" if speedup else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"Steady step time per stage, median over each count's finished runs; speedup = time on "
              f"{_count(base, t)} / time on K, efficiency = speedup / (K/{base}).", "",
              f"| {t['units']} | runs | final val loss (mean) | paired difference to {_count(base, t)} (same seed) "
              "| train time (s, mean) |",
              "| ---: | ---: | ---: | --- | ---: |"]
    base_losses = per[base]["loss_by_seed"]
    for k in counts:
        p = per[k]
        losses = list(p["loss_by_seed"].values())
        diffs = [p["loss_by_seed"][s] - base_losses[s] for s in p["loss_by_seed"] if s in base_losses]
        if k == base:
            diff = "-"
        elif diffs:
            diff = " ".join(f"{x:+.4f}" for x in diffs) + f" (max \\|d\\| {max(abs(x) for x in diffs):.4f})"
        else:
            diff = "no common seed"
        mean_loss = f"{statistics.fmean(losses):.4f}" if losses else "-"
        mean_time = f"{statistics.fmean(p['train_time_s']):.3f}" if p["train_time_s"] else "-"
        lines.append(f"| {k} | {p['runs']} | {mean_loss} | {diff} | {mean_time} |")
    lines += ["", f"Every count does the same math on the same rows (gradient accumulation makes up for the missing "
              f"{t['units']}), so the paired differences show only reduction order and kernel nondeterminism.", ""]
    return "\n".join(lines)
