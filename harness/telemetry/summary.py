"""Per-run telemetry summary: what the GPUs did inside the run's timed window.

Reads the sampler's files in a run folder (telemetry.csv, energy.csv, telemetry_meta.json, and
sampler_exit.json from the harness; trace.py reads them) and returns one JSON-able dict: per GPU and for the
run as a whole (the worst GPU where "worst" makes sense). It also writes telemetry.npz, the same series as columns, which
is about 5x smaller than the CSV and loads without parsing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.fsio import read_json_object
from harness.telemetry.files import META_JSON
from harness.telemetry.trace import Trace, load_trace, write_npz

# Clock-event ("throttle") reason bits of nvmlDeviceGetCurrentClocksEventReasons that the summary reports.
THROTTLE_REASONS = {
    "idle": 0x1,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}

# A gap between two ticks longer than this many periods counts as a sampler gap.
GAP_FACTOR = 3.0


def _interval_weights(t: np.ndarray, lo: float, hi: float, period: float) -> np.ndarray:
    """Seconds each sample stands for inside [lo, hi]: from its time to the next sample's, but at most
    GAP_FACTOR periods (beyond that the sampler was not looking); the last sample stands for one period."""
    if len(t) == 0:
        return np.zeros(0)
    nxt = np.append(t[1:], t[-1] + period)
    end = np.minimum(nxt, t + GAP_FACTOR * period)
    return np.clip(np.minimum(end, hi) - np.maximum(t, lo), 0.0, None)


def _round(x, nd=1):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


def _gpu_summary(tr: Trace, g: int, window: tuple[float, float] | None, period: float) -> dict:
    s = tr.gpu(g)
    t = s["t_unix"]
    dev = next((d for d in tr.meta.get("devices", []) if d.get("index") == g), {})
    out: dict = {"name": dev.get("name"), "uuid": dev.get("uuid"), "power_limit_w": dev.get("power_limit_w"),
                 "samples": int(len(t))}
    if len(t) == 0:
        out["note"] = "no samples"
        return out
    lo, hi = window if window else (float(t[0]), float(t[-1]) + period)
    inside = (t >= lo) & (t <= hi)
    out["samples_in_window"] = int(inside.sum())

    sm = s["sm_mhz"][inside]
    sm = sm[~np.isnan(sm)]
    if len(sm):
        out["sm_clock_mean_mhz"] = _round(sm.mean())
        out["sm_clock_p5_mhz"] = _round(np.percentile(sm, 5))
        out["sm_clock_min_mhz"] = _round(sm.min())
    else:
        out["sm_clock_mean_mhz"] = out["sm_clock_p5_mhz"] = out["sm_clock_min_mhz"] = None
    mem = s["mem_mhz"][inside]
    out["mem_clock_mean_mhz"] = _round(np.nanmean(mem)) if np.any(~np.isnan(mem)) else None
    util = s["util_pct"][inside]
    out["util_mean_pct"] = _round(np.nanmean(util)) if np.any(~np.isnan(util)) else None

    # Seconds under each throttle reason: each sample stands for the time until the next one.
    w = _interval_weights(t, lo, hi, period)
    reasons = s["reasons"]
    known = ~np.isnan(reasons)
    bits = np.where(known, reasons, 0).astype(np.int64)
    if known.any():
        out["throttle_s"] = {name: _round(w[known & ((bits & bit) != 0)].sum(), 2)
                             for name, bit in THROTTLE_REASONS.items()}
    else:  # this GPU/driver does not report reasons: unknown, not zero
        out["throttle_s"] = {name: None for name in THROTTLE_REASONS}
    out["covered_s"] = _round(w.sum(), 2)
    out["window_s"] = _round(hi - lo, 2)

    pw = s["power_w"]
    p_in = pw[inside]
    out["peak_power_w"] = _round(np.nanmax(p_in)) if np.any(~np.isnan(p_in)) else None
    out["mean_power_w"] = _round(np.nanmean(p_in)) if np.any(~np.isnan(p_in)) else None
    tc = s["temp_c"][inside]
    out["peak_temp_c"] = _round(np.nanmax(tc), 0) if np.any(~np.isnan(tc)) else None
    # Energy by integrating the sampled power: a cross-check of the counter over a whole trace only, since
    # NVML's power reading is a ~1 s running average on H100 (it lags a load step; see fixtures README).
    ok = ~np.isnan(pw)
    out["power_integral_j"] = _round(float((pw[ok] * w[ok]).sum()), 1) if ok.any() else None

    # Energy from the counter, interpolated linearly to the window's ends between its 1 Hz readings.
    te, e = tr.gpu_energy(g)
    good = ~np.isnan(e)
    te, e = te[good], e[good]
    if len(te) >= 2:
        a, b = max(lo, te[0]), min(hi, te[-1])
        if b > a:
            out["energy_j"] = _round((np.interp(b, te, e) - np.interp(a, te, e)) / 1000.0, 1)
            out["energy_covered_s"] = _round(b - a, 2)
        else:
            out["energy_j"] = None
    else:
        out["energy_j"] = None

    # Sampler health over the whole trace.
    dt = np.diff(t)
    out["max_gap_s"] = _round(dt.max(), 3) if len(dt) else None
    out["gaps_over_3x"] = int((dt > GAP_FACTOR * period).sum())
    out["first_sample_unix"] = float(t[0])
    out["last_sample_unix"] = float(t[-1])
    return out


def _died(tr: Trace, window: tuple[float, float] | None, period: float) -> tuple[bool, str | None]:
    state = tr.meta.get("state")
    if tr.exit.get("died_reason"):
        return True, str(tr.exit["died_reason"])
    if state == "died":
        return True, str(tr.meta.get("error") or "sampler died")
    if state in ("running", "starting") and tr.exit.get("alive_at_stop") is not True:
        return True, "sampler ended without its final reading (killed?)"
    if state is None:
        return True, "no telemetry_meta.json (sampler did not start cleanly)"
    return False, None


def summarize_run(run_dir: Path, timed_window: tuple[float, float] | None) -> dict | None:
    """Summary of the run's telemetry inside timed_window (unix seconds; None: the whole trace).

    None when the run has no telemetry (sampler not started: no NVML, or telemetry off).
    """
    run_dir = Path(run_dir)
    try:
        tr = load_trace(run_dir)
    except HarnessError as e:  # a trace without a required column: said in the summary, not a failed run
        meta = read_json_object(run_dir / META_JSON)
        return {"sampler_died": True, "sampler_note": f"telemetry unreadable: {e}",
                "gpus": meta.get("gpus", []), "per_gpu": {}}
    if tr is None:
        meta = read_json_object(run_dir / META_JSON)
        if meta:  # the sampler started but wrote no series: say why
            return {"sampler_died": True, "sampler_note": meta.get("error") or "no samples written",
                    "gpus": meta.get("gpus", []), "per_gpu": {}}
        return None
    window, window_note = None, None
    if timed_window is not None:
        try:
            lo, hi = float(timed_window[0]), float(timed_window[1])
            ok = math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        except (TypeError, ValueError, IndexError):
            ok = False
        if ok:
            window = (lo, hi)
        else:  # a summary must not fail a campaign: summarize the whole trace and say why
            window_note = f"invalid timed window {timed_window!r}: summarized the whole trace"
    period = 1.0 / tr.hz
    per_gpu = {str(g): _gpu_summary(tr, g, window, period) for g in tr.gpus}
    died, note = _died(tr, window, period)

    def collect(key):
        return [v[key] for v in per_gpu.values() if v.get(key) is not None]

    out: dict = {
        "hz": tr.hz,
        "gpus": tr.gpus,
        "window": list(window) if window else None,
        "samples": int(len(tr.cols["t_unix"])),
        "sampler_died": died,
        "sampler_note": note,
        "window_note": window_note,
        "gpu_names": sorted(set(collect("name"))),
        "gpu_uuids": collect("uuid"),
        "power_limits_w": sorted(set(collect("power_limit_w"))),
    }
    means = collect("sm_clock_mean_mhz")
    out["sm_clock_mean_mhz"] = _round(np.mean(means)) if means else None
    out["sm_clock_p5_mhz"] = min(collect("sm_clock_p5_mhz"), default=None)
    out["sm_clock_min_mhz"] = min(collect("sm_clock_min_mhz"), default=None)
    out["throttle_s"] = {name: max((v["throttle_s"][name] for v in per_gpu.values()
                                    if v.get("throttle_s", {}).get(name) is not None), default=None)
                         for name in THROTTLE_REASONS}
    energies = collect("energy_j")
    out["energy_j"] = _round(sum(energies), 1) if energies and len(energies) == len(per_gpu) else None
    integrals = collect("power_integral_j")
    out["power_integral_j"] = _round(sum(integrals), 1) if integrals else None
    out["peak_power_w"] = max(collect("peak_power_w"), default=None)
    out["peak_temp_c"] = max(collect("peak_temp_c"), default=None)
    out["max_gap_s"] = max(collect("max_gap_s"), default=None)
    out["gaps_over_3x"] = sum(collect("gaps_over_3x"))
    if window:
        covered = collect("covered_s")
        out["window_coverage"] = _round(min(covered) / (window[1] - window[0]), 3) if covered and window[1] > window[0] else None
        if died and out["window_coverage"] is not None and out["window_coverage"] < 0.95:
            out["sampler_note"] = f"{note}; samples cover {out['window_coverage']:.0%} of the timed window"
    out["per_gpu"] = per_gpu
    try:
        write_npz(run_dir, tr)
    except OSError:
        pass  # the columnar copy is a convenience; the CSV stays
    return out
