"""Campaign-level telemetry: which runs ran on a slower (or different) GPU, and the record.md table.

A speedrun record compares times that differ by ~1%; a run whose GPU spent its timed window at a lower
clock (power cap, heat, a different card) is named here with the likely cause, so that a reader of the
record can discount it instead of guessing.
"""

from __future__ import annotations

import statistics
from collections import Counter

# A run's mean SM clock is an outlier when it is this far from the campaign's median: the larger of a
# robust z of 3.5 (MAD-based) and 1% of the median (1% clock is about 1% step time on a compute-bound run).
ROBUST_Z = 3.5
MIN_REL_CLOCK_DEV = 0.01
# Power-cap time (as a fraction of the timed window) this much above the campaign's median counts as more.
POWER_CAP_FRACTION_DEV = 0.10
MIN_RUNS_FOR_CLOCK_OUTLIERS = 3


def _fraction(summary: dict, reason: str) -> float:
    w = summary.get("window")
    span = (w[1] - w[0]) if w else None
    if not span or span <= 0:
        covered = [g.get("covered_s") or 0 for g in summary.get("per_gpu", {}).values()]
        span = max(covered, default=0)
    if not span:
        return 0.0
    return float((summary.get("throttle_s") or {}).get(reason) or 0.0) / span


def _robust_outlier(x: float, values: list[float]) -> bool:
    med = statistics.median(values)
    mad = statistics.median([abs(v - med) for v in values])
    return abs(x - med) > max(ROBUST_Z * 1.4826 * mad, MIN_REL_CLOCK_DEV * abs(med))


def _gpu_key(s: dict) -> tuple:
    return tuple(s.get("gpu_names") or ())


def campaign_outliers(run_summaries: list[tuple[str, dict]]) -> list[str]:
    """Lines naming runs whose GPU behaved unlike the campaign's other runs, each with its likely cause."""
    runs = [(label, s) for label, s in run_summaries if s]
    lines: list[str] = []
    if not runs:
        return lines
    # The campaign's usual GPU model and power limit: the most common ones.
    usual_gpu = Counter(_gpu_key(s) for _, s in runs).most_common(1)[0][0]
    usual_limit = Counter(tuple(s.get("power_limits_w") or ()) for _, s in runs).most_common(1)[0][0]
    usual_uuids = Counter(tuple(s.get("gpu_uuids") or ()) for _, s in runs).most_common(1)[0][0]
    clocks = [s["sm_clock_mean_mhz"] for _, s in runs if s.get("sm_clock_mean_mhz") is not None]
    cap_fracs = [_fraction(s, "sw_power_cap") for _, s in runs]
    med_cap = statistics.median(cap_fracs)
    temps = [s["peak_temp_c"] for _, s in runs if s.get("peak_temp_c") is not None]
    med_temp = statistics.median(temps) if temps else None

    for (label, s), cap in zip(runs, cap_fracs):
        causes: list[str] = []
        if _gpu_key(s) != usual_gpu:
            causes.append(f"a different GPU ({', '.join(s.get('gpu_names') or ['unknown'])} "
                          f"vs {', '.join(usual_gpu) or 'unknown'})")
        elif usual_uuids and tuple(s.get("gpu_uuids") or ()) != usual_uuids:
            causes.append("different GPU units than the other runs (UUIDs differ)")
        if tuple(s.get("power_limits_w") or ()) != usual_limit:
            causes.append(f"a different power limit ({_join_w(s.get('power_limits_w'))} vs {_join_w(usual_limit)})")
        thermal = sum(float(s.get("throttle_s", {}).get(k) or 0) for k in ("sw_thermal", "hw_thermal"))
        if thermal > 0:
            causes.append(f"thermal slowdown for {thermal:.1f} s (peak {s.get('peak_temp_c')} °C)")
        hw = sum(float(s.get("throttle_s", {}).get(k) or 0) for k in ("hw_slowdown", "hw_power_brake"))
        if hw > 0:
            causes.append(f"hardware slowdown / power brake for {hw:.1f} s (power supply or board signal)")
        if cap - med_cap > POWER_CAP_FRACTION_DEV:
            causes.append(f"power cap for {cap:.0%} of the timed window (campaign median {med_cap:.0%})")

        clock = s.get("sm_clock_mean_mhz")
        slow = fast = False
        if clock is not None and len(clocks) >= MIN_RUNS_FOR_CLOCK_OUTLIERS and _robust_outlier(clock, clocks):
            med = statistics.median(clocks)
            slow, fast = clock < med, clock > med
            head = f"run {label}: mean SM clock {clock:.0f} MHz vs campaign median {med:.0f} MHz"
        else:
            head = f"run {label}:"
        if slow and not causes:
            if med_temp is not None and s.get("peak_temp_c") is not None and s["peak_temp_c"] >= med_temp + 10:
                causes.append(f"a hotter GPU (peak {s['peak_temp_c']:.0f} °C vs median {med_temp:.0f} °C)")
            else:
                causes.append("cause unknown: no throttle reason recorded")
        if fast and not causes:
            causes.append("faster clock than the other runs: less power-capped (lighter load or cooler GPU?)")
        if s.get("sampler_died"):
            causes.append(f"telemetry incomplete: {s.get('sampler_note') or 'sampler died'}")
        if causes:
            lines.append(f"{head} {'; '.join(causes)}" if head.endswith(":") else f"{head}: likely {'; '.join(causes)}")
    return lines


def _join_w(limits) -> str:
    return "/".join(f"{w:.0f} W" for w in (limits or ())) or "unknown"


def _f(v, fmt="{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def telemetry_markdown(run_summaries: list[tuple[str, dict]]) -> str:
    """The record.md telemetry section: one row per run, then the outlier lines."""
    out = ["## Telemetry", ""]
    runs = [(label, s) for label, s in run_summaries if s]
    if not runs:
        out.append("Telemetry was off for this campaign (no NVIDIA driver, or disabled).")
        return "\n".join(out) + "\n"
    names = sorted({n for _, s in runs for n in (s.get("gpu_names") or [])})
    hz = sorted({s.get("hz") for _, s in runs if s.get("hz")})
    out.append(f"GPU: {', '.join(names) or 'unknown'}; sampled at {', '.join(f'{h:g}' for h in hz)} Hz "
               "from a separate process; clocks and throttle times inside each run's timed window "
               "(worst GPU for p5/min and throttle; energy summed over GPUs, from the energy counter).")
    out.append("")
    out.append("| run | SM clock mean / p5 / min (MHz) | power cap (s) | thermal (s) | HW slowdown (s) "
               "| energy (kJ) | peak power (W) | peak temp (°C) | sampler |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by_label = dict(run_summaries)
    for label, s in run_summaries:
        if not s:
            out.append(f"| {label} | no telemetry | | | | | | | |")
            continue
        th = s.get("throttle_s") or {}
        thermal = float(th.get("sw_thermal") or 0) + float(th.get("hw_thermal") or 0)
        hw = float(th.get("hw_slowdown") or 0) + float(th.get("hw_power_brake") or 0)
        energy = s.get("energy_j")
        if s.get("sampler_died"):
            health = f"died: {s.get('sampler_note')}"
        else:
            health = f"ok, max gap {_f(s.get('max_gap_s'), '{:.2f}')} s"
            if s.get("gaps_over_3x"):
                health += f", {s['gaps_over_3x']} gaps"
        out.append(
            f"| {label} | {_f(s.get('sm_clock_mean_mhz'))} / {_f(s.get('sm_clock_p5_mhz'))} / "
            f"{_f(s.get('sm_clock_min_mhz'))} | {_f(th.get('sw_power_cap'), '{:.1f}')} | {thermal:.1f} | {hw:.1f} "
            f"| {_f(energy / 1000 if energy is not None else None, '{:.1f}')} | {_f(s.get('peak_power_w'))} "
            f"| {_f(s.get('peak_temp_c'))} | {health} |"
        )
    del by_label
    out.append("")
    lines = campaign_outliers(run_summaries)
    if lines:
        out.append("Outlier runs:")
        out.append("")
        out.extend(f"- {line}" for line in lines)
    else:
        out.append("No outlier runs: clocks, throttle times and GPUs agree across the campaign.")
    return "\n".join(out) + "\n"
