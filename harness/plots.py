"""Campaign plots (PNG, matplotlib): what the GPUs did during each run, and every run's val-loss curve.

    plots/clocks_power.png  SM clock and power over time, one panel per run, the timed window shaded
    plots/val_loss.png      val loss against step, one line per run, the track's target dashed
    plots/scaling.png       (scaling campaigns) steady step time per stage against the GPU count, ideal 1/K dotted

A plot is a convenience: a run with a malformed run.json or no telemetry is left out, never fatal; a trace
without a required column is refused (one error line), not drawn as empty.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from harness.fsio import write_bytes_atomic
from harness.results import RUNS_FOLDER, Run, kind_of, read_campaign_or_empty, read_run_or_empty
from harness.scaling import scaling_table
from harness.telemetry.trace import load_trace


def _run_dirs(campaign_dir: Path) -> list[Path]:
    runs = [p for p in (campaign_dir / RUNS_FOLDER).glob("*") if p.is_dir()]
    return sorted(runs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def _label(run_dir: Path, run: Run) -> str:
    label = run.arm or run.extra.get("label") or run.extra.get("name")
    return f"{run_dir.name}: {label}" if label and str(label) != run_dir.name else f"run {run_dir.name}"


def _target(campaign_dir: Path) -> float | None:
    c = read_campaign_or_empty(campaign_dir)
    for v in (c.extra.get("target"), c.track.get("target") if isinstance(c.track, dict) else None):
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def plot_clocks_power(campaign_dir: Path, out: Path) -> Path | None:
    import matplotlib  # deferred: slow to import, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as matplotlib

    panels = []
    for run_dir in _run_dirs(campaign_dir):
        trace = load_trace(run_dir)
        if trace is None or len(trace.cols["t_unix"]) == 0:
            continue
        run = read_run_or_empty(run_dir)
        panels.append((run_dir, run, trace))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.0 + 2.0 * len(panels)), squeeze=False)
    for ax, (run_dir, run, trace) in zip(axes[:, 0], panels):
        t0 = float(trace.cols["t_unix"].min())
        ax2 = ax.twinx()
        for g in trace.gpus:
            s = trace.gpu(g)
            t = s["t_unix"] - t0
            ax.plot(t, s["sm_mhz"], color="tab:blue", lw=1.0, alpha=0.8, label="SM clock" if g == trace.gpus[0] else None)
            ax2.plot(t, s["power_w"], color="tab:red", lw=1.0, alpha=0.6, label="power" if g == trace.gpus[0] else None)
        window = run.timed_window_unix
        if isinstance(window, list) and len(window) == 2 and all(isinstance(x, (int, float)) for x in window):
            ax.axvspan(window[0] - t0, window[1] - t0, color="tab:green", alpha=0.12, label="timed window")
        limits = [d.get("power_limit_w") for d in trace.meta.get("devices", []) if d.get("power_limit_w")]
        if limits:
            ax2.axhline(max(limits), color="tab:red", ls=":", lw=0.8)
        ax.set_ylabel("SM clock (MHz)", color="tab:blue")
        ax2.set_ylabel("power (W)", color="tab:red")
        sm = trace.cols["sm_mhz"]
        ax.set_ylim(0, max(2100.0, float(np.nanmax(sm)) * 1.05 if np.any(~np.isnan(sm)) else 0.0))
        ax2.set_ylim(0, max(750, (max(limits) if limits else 0) * 1.08))
        n = len(trace.gpus)
        ax.set_title(f"{_label(run_dir, run)} ({n} GPU{'s' if n > 1 else ''})", fontsize=9, loc="left")
        ax.set_xlabel("seconds since the sampler started", fontsize=8)
        if ax is axes[0, 0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=7, ncol=3)
    fig.suptitle("SM clock and power per run (shaded: timed window; dotted: power limit)", fontsize=10)
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_val_loss(campaign_dir: Path, out: Path) -> Path | None:
    import matplotlib  # deferred: slow to import, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as matplotlib

    curves = []
    for run_dir in _run_dirs(campaign_dir):
        run = read_run_or_empty(run_dir)
        curve = run.val_curve
        if not isinstance(curve, list):
            continue
        pts = [(float(p[0]), float(p[1])) for p in curve
               if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, (int, float)) for x in p)]
        if pts:
            curves.append((_label(run_dir, run), str(run.arm or ""), pts))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    arms = sorted({arm for _, arm, _ in curves})
    by_arm = len(arms) > 1  # e.g. candidate vs the re-timed previous record: one colour per arm
    seen = set()
    for i, (label, arm, pts) in enumerate(curves):
        color = f"C{arms.index(arm) if by_arm else i % 10}"
        legend = (arm if arm not in seen else None) if by_arm else label
        seen.add(arm)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1.0, ms=4, color=color, alpha=0.8,
                label=legend)
    target = _target(campaign_dir)
    if target is not None:
        ax.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    ax.set_title(f"val loss of {len(curves)} run{'s' if len(curves) > 1 else ''}")
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_scaling(campaign_dir: Path, out: Path) -> Path | None:
    """Step time per stage against the GPU count (log-log), with the ideal 1/K line from the smallest count."""
    try:
        t = scaling_table(campaign_dir)
    except Exception:  # a plot never fails a campaign (see the module docstring)
        return None
    counts, per = t["counts"], t["per_count"]
    stages = list(dict.fromkeys(s for k in counts for s in per[k]["stage_ms"]))
    if not stages:
        return None
    import matplotlib  # deferred: slow to import, only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred, as matplotlib

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, stage in enumerate(stages):
        ks = [k for k in counts if stage in per[k]["stage_ms"]]
        ms = [per[k]["stage_ms"][stage] for k in ks]
        color = f"C{i % 10}"
        ax.plot(ks, ms, "o-", color=color, label=stage)
        if ks and ks[0] == counts[0]:
            ax.plot(counts, [ms[0] * counts[0] / k for k in counts], ":", color=color, linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts, [str(k) for k in counts])
    ax.set_xlabel(t["units"])
    ax.set_ylabel("steady step time (ms)")
    ax.set_title("step time against count (dotted: ideal 1/K)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path


# The plots a kind names (results.KINDS), each written to plots/<name>.png.
PLOTS = {"clocks_power": plot_clocks_power, "val_loss": plot_val_loss, "scaling": plot_scaling}


def make_campaign_plots(campaign_dir: Path) -> list[Path]:
    """Write the campaign's PNGs into campaign_dir/plots/; returns the paths written."""
    campaign_dir = Path(campaign_dir)
    plots = campaign_dir / "plots"
    kind = kind_of(read_campaign_or_empty(campaign_dir))
    written = [PLOTS[name](campaign_dir, plots / f"{name}.png") for name in kind.plots]
    return [p for p in written if p is not None]
