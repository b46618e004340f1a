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
# Power-cap time (a fraction of the timed window) must exceed the campaign's median by at least this much.
POWER_CAP_FRACTION_DEV = 0.10
MIN_RUNS_FOR_OUTLIERS = 3  # with fewer runs there is no 'usual' to stand out from
# Inside one run on several GPUs every rank waits for the slowest at each collective: a GPU whose mean SM
# clock is this far under the median of the run's other GPUs sets the pace of the whole run.
STRAGGLER_REL_CLOCK = 0.01
LIMITING_REASONS = ("sw_power_cap", "sw_thermal", "hw_thermal", "hw_slowdown", "hw_power_brake")


def _fraction(summary: dict, reason: str) -> float:
    """Share of the sampled part of the timed window spent under a throttle reason (worst GPU)."""
    covered = max((g.get("covered_s") or 0.0 for g in (summary.get("per_gpu") or {}).values()), default=0.0)
    if not covered:
        return 0.0
    return min(1.0, _throttle(summary, reason) / covered)


def _robust_outlier(x: float, values: list[float], min_dev: float) -> bool:
    """x is further from the median of values than a robust z of ROBUST_Z (MAD-based) and min_dev."""
    med = statistics.median(values)
    mad = statistics.median([abs(v - med) for v in values])
    return abs(x - med) > max(ROBUST_Z * 1.4826 * mad, min_dev)


def _gpu_key(s: dict) -> tuple:
    return tuple(s.get("gpu_names") or ())


def _throttle(s: dict, *keys: str) -> float:
    th = s.get("throttle_s") or {}
    return sum(float(th.get(k) or 0.0) for k in keys)


def _gpu_count(s: dict) -> int:
    """GPUs the run's sampler watched (also known when it died before its first sample)."""
    return len(s.get("gpus") or s.get("gpu_uuids") or ())


def campaign_outliers(run_summaries: list[tuple[str, dict]]) -> list[str]:
    """Lines naming runs whose GPU behaved unlike the campaign's other runs, each with its likely cause.

    A run is named when its mean SM clock or its power-cap time is an outlier among the campaign's runs
    (robust z over the median absolute deviation, and at least 1% of clock / 10% of the window), when it
    ran on a different GPU model, units or power limit than most runs, when it spent any time in thermal or
    hardware slowdown (never normal in a datacenter), or when its sampler died.

    Runs on different numbers of GPUs (a scaling campaign) are compared only with runs on as many GPUs: a
    2-GPU run has other units, energy and clocks than a 1-GPU run by design, not by fault.
    """
    runs = [(label, s) for label, s in run_summaries if s]
    by_count: dict[int, list] = {}
    for label, s in runs:
        by_count.setdefault(_gpu_count(s), []).append((label, s))
    if len(by_count) <= 1:
        return _outliers_among(runs)
    lines = []
    for count, members in sorted(by_count.items()):
        lines += [f"{line} (among the {count}-GPU runs)" for line in _outliers_among(members)]
    return lines


def _identity_causes(s: dict, usual_gpu: tuple, usual_uuids: tuple, usual_limit: tuple) -> list[str]:
    """A run on another GPU model, other units or another power limit than most runs."""
    causes = []
    if _gpu_key(s) != usual_gpu:
        causes.append(f"a different GPU ({', '.join(s.get('gpu_names') or ['unknown'])} "
                      f"vs {', '.join(usual_gpu) or 'unknown'} in most runs)")
    elif usual_uuids and tuple(s.get("gpu_uuids") or ()) != usual_uuids:
        causes.append("different GPU units than most runs (UUIDs differ)")
    if tuple(s.get("power_limits_w") or ()) != usual_limit:
        causes.append(f"a different power limit ({_join_w(s.get('power_limits_w'))} vs {_join_w(usual_limit)})")
    return causes


def _outliers_among(runs: list[tuple[str, dict]]) -> list[str]:
    lines: list[str] = []
    if not runs:
        return lines

    # a run whose sampler recorded nothing has no GPU identity to compare (its death is reported below)
    identified = [s for _, s in runs if s.get("per_gpu")]

    def most_common(key):
        return Counter(key(s) for s in identified).most_common(1)[0][0] if identified else key({})

    usual_gpu = most_common(_gpu_key)
    usual_limit = most_common(lambda s: tuple(s.get("power_limits_w") or ()))
    usual_uuids = most_common(lambda s: tuple(s.get("gpu_uuids") or ()))
    clocks = [s["sm_clock_mean_mhz"] for _, s in runs if s.get("sm_clock_mean_mhz") is not None]
    med_clock = statistics.median(clocks) if clocks else None
    caps = {label: _fraction(s, "sw_power_cap") for label, s in runs}
    med_cap = statistics.median(caps.values())
    temps = [s["peak_temp_c"] for _, s in runs if s.get("peak_temp_c") is not None]
    med_temp = statistics.median(temps) if temps else None
    enough = len(runs) >= MIN_RUNS_FOR_OUTLIERS

    for label, s in runs:
        causes = _identity_causes(s, usual_gpu, usual_uuids, usual_limit) if s.get("per_gpu") else []
        thermal = _throttle(s, "sw_thermal", "hw_thermal")
        if thermal > 0:
            causes.append(f"thermal slowdown for {thermal:.1f} s (peak {s.get('peak_temp_c')} °C)")
        hw = _throttle(s, "hw_slowdown", "hw_power_brake")
        if hw > 0:
            causes.append(f"hardware slowdown / power brake for {hw:.1f} s (power supply or board signal)")
        cap = caps[label]
        cap_outlier = enough and cap > med_cap and _robust_outlier(cap, list(caps.values()), POWER_CAP_FRACTION_DEV)
        if cap_outlier:
            causes.append(f"power cap for {cap:.0%} of the timed window (campaign median {med_cap:.0%})")

        clock = s.get("sm_clock_mean_mhz")
        clock_outlier = (enough and clock is not None and len(clocks) >= MIN_RUNS_FOR_OUTLIERS
                         and _robust_outlier(clock, clocks, MIN_REL_CLOCK_DEV * med_clock))
        if clock_outlier and not causes:
            if clock > med_clock:
                causes.append("less throttled than the other runs (a lighter load, or a cooler GPU)")
            elif cap >= 0.5 and cap >= med_cap:
                causes.append(f"power cap: at its power limit for {cap:.0%} of the window (campaign median "
                              f"{med_cap:.0%}), so this GPU or load draws more power per clock")
            elif med_temp is not None and s.get("peak_temp_c") is not None and s["peak_temp_c"] >= med_temp + 10:
                causes.append(f"a hotter GPU (peak {s['peak_temp_c']:.0f} °C vs median {med_temp:.0f} °C)")
            else:
                causes.append("cause unknown: no throttle reason recorded")
        if s.get("sampler_died"):
            causes.append(f"telemetry incomplete ({s.get('sampler_note') or 'sampler died'})")
        if not causes:
            continue
        head = f"run {label}"
        if clock_outlier:
            head += f": mean SM clock {clock:.0f} MHz vs campaign median {med_clock:.0f} MHz; likely"
        lines.append(f"{head}: {'; '.join(causes)}" if not clock_outlier else f"{head} {'; '.join(causes)}")
    return lines


def gpu_stragglers(run_summaries: list[tuple[str, dict]]) -> list[str]:
    """For every run on several GPUs: the GPU with the lowest mean SM clock and the GPU with the most
    throttle time (power cap, thermal, hardware slowdown), named with their numbers, and whether the
    slowest stands apart from the run's other GPUs by STRAGGLER_REL_CLOCK or more."""
    lines = []
    for label, s in run_summaries:
        gpus = [(g, v) for g, v in ((s or {}).get("per_gpu") or {}).items() if v.get("sm_clock_mean_mhz") is not None]
        if len(gpus) < 2:
            continue
        slow_id, slow = min(gpus, key=lambda gv: gv[1]["sm_clock_mean_mhz"])
        others = statistics.median(v["sm_clock_mean_mhz"] for g, v in gpus if g != slow_id)
        gap = (others - slow["sm_clock_mean_mhz"]) / others if others else 0.0
        verdict = (f"a straggler, {gap:.1%} under the others" if gap >= STRAGGLER_REL_CLOCK
                   else "within 1% of the others")
        worst_id, worst = max(gpus, key=lambda gv: _throttle(gv[1], *LIMITING_REASONS))
        th = worst.get("throttle_s") or {}
        detail = ", ".join(f"{k} {float(th.get(k) or 0):.1f} s" for k in LIMITING_REASONS if th.get(k))
        lines.append(
            f"run {label}: slowest GPU {slow_id} ({slow.get('name') or 'unknown'}) at a mean SM clock of "
            f"{slow['sm_clock_mean_mhz']:.0f} MHz vs {others:.0f} MHz for the median of the other {len(gpus) - 1}: "
            f"{verdict}; most throttled GPU {worst_id}: {_throttle(worst, *LIMITING_REASONS):.1f} s"
            + (f" ({detail})" if detail else ""))
    return lines


def _per_gpu_markdown(run_summaries: list[tuple[str, dict]]) -> list[str]:
    rows = ["| run | GPU | SM clock mean / p5 (MHz) | power cap (s) | thermal (s) | energy (kJ) | peak temp (°C) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, s in run_summaries:
        for g, v in sorted(((s or {}).get("per_gpu") or {}).items(), key=lambda gv: int(gv[0])):
            th = v.get("throttle_s") or {}
            energy = v.get("energy_j")
            rows.append(f"| {label} | {g} | {_f(v.get('sm_clock_mean_mhz'))} / {_f(v.get('sm_clock_p5_mhz'))} "
                        f"| {_f(th.get('sw_power_cap'), '{:.1f}')} "
                        f"| {float(th.get('sw_thermal') or 0) + float(th.get('hw_thermal') or 0):.1f} "
                        f"| {_f(energy / 1000 if energy is not None else None, '{:.1f}')} "
                        f"| {_f(v.get('peak_temp_c'))} |")
    return rows


def _join_w(limits) -> str:
    return "/".join(f"{w:.0f} W" for w in (limits or ())) or "unknown"


def _f(v, fmt="{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def telemetry_markdown(run_summaries: list[tuple[str, dict]]) -> str:
    """The body of record.md's telemetry section (harness/report.py writes the heading): one row per run, then the
    outlier lines."""
    out: list[str] = []
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
    for label, s in run_summaries:
        if not s:
            out.append(f"| {label} | no telemetry | | | | | | | |")
            continue
        th = s.get("throttle_s") or {}
        thermal = float(th.get("sw_thermal") or 0) + float(th.get("hw_thermal") or 0)
        hw = float(th.get("hw_slowdown") or 0) + float(th.get("hw_power_brake") or 0)
        energy = s.get("energy_j")
        partial = (s.get("window_coverage") or 1.0) < 0.95
        if s.get("sampler_died"):
            health = f"died: {s.get('sampler_note')}"
        else:
            health = f"ok, max gap {_f(s.get('max_gap_s'), '{:.2f}')} s"
            if s.get("gaps_over_3x"):
                health += f", {s['gaps_over_3x']} gaps"
        out.append(
            f"| {label} | {_f(s.get('sm_clock_mean_mhz'))} / {_f(s.get('sm_clock_p5_mhz'))} / "
            f"{_f(s.get('sm_clock_min_mhz'))} | {_f(th.get('sw_power_cap'), '{:.1f}')} | {thermal:.1f} | {hw:.1f} "
            f"| {_f(energy / 1000 if energy is not None else None, '{:.1f}')}{' (partial)' if partial else ''} "
            f"| {_f(s.get('peak_power_w'))} "
            f"| {_f(s.get('peak_temp_c'))} | {health} |"
        )
    out.append("")
    stragglers = gpu_stragglers(run_summaries)
    if stragglers:
        out += ["Per GPU (every rank waits for the slowest GPU at each collective):", ""]
        out += _per_gpu_markdown(run_summaries) + [""]
        out += [f"- {line}" for line in stragglers] + [""]
    lines = campaign_outliers(run_summaries)
    if lines:
        out.append("Outlier runs:")
        out.append("")
        out.extend(f"- {line}" for line in lines)
    else:
        out.append("No outlier runs: clocks, throttle times and GPUs agree across the campaign.")
    return "\n".join(out) + "\n"
