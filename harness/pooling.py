"""Several compare campaigns of the same two codes read as one (`speedrun pool`): the runs a session could not hold.

A compare's times are comparable only inside the campaign, where the arms alternated on one node; across nodes
the same code moved by up to 5 % (tracks/short/NOTES.md). So the pooled time figure is built from the per-pair
differences (candidate - baseline of the two runs of one pair, one node each), with a one-sample t interval, and
each campaign keeps its own row. Losses do not depend on the node, so they pool as they are: the val-curve and
stage tables over every ok run of every campaign.

Pooling needs the same experiment in every campaign: per arm the same code (the compile cache's digest of the
code folder, else the script's sha256), GPU count and environment (DATA_PATH aside, a path on one node), and the
same software. Where they differ the pool is refused with the differences named; with allow_differences they
head the report instead. Seeds that repeat across campaigns are named: a seeded script's runs of one seed are
not independent draws (our short track's losses repeat at a seed)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.comparison import mean_sd_text, pooled_stage_time_table, val_curve_table
from harness.errors import HarnessError
from harness.fingerprint import PIN_KEYS
from harness.markdown import md_cell, md_text
from harness.record_block import p_value
from harness.results import (BASELINE, CANDIDATE, Campaign, Run, arm_values, load_campaign, load_runs, ok_runs,
                             pair_differences)
from harness.rules import CONFIDENCE

ARMS = (BASELINE, CANDIDATE)
NODE_LOCAL_ENV = ("DATA_PATH",)  # where the data lies on that node: not part of the experiment


def _obj(value) -> dict:
    """A JSON object as it is, anything else (a hand-edited or hostile campaign.json) as an empty one."""
    return value if isinstance(value, dict) else {}


@dataclass
class Member:
    """One campaign of the pool."""

    folder: Path
    campaign: Campaign
    runs: list[Run]


def load_member(folder: str | Path) -> Member:
    """A compare campaign with its runs; one clear error for anything else (a profile's runs are no timing)."""
    d = Path(folder)
    campaign = load_campaign(d)
    if not set(ARMS) <= set(campaign.arms or {}):
        raise HarnessError(f"{d}: not a compare campaign (it needs arms 'baseline' and 'candidate')")
    bad = [arm for arm in ARMS if not isinstance(campaign.arms[arm], dict)]
    if bad:
        raise HarnessError(f"{d}: campaign.json's arm {bad[0]!r} is not an object")
    if campaign.profile:
        raise HarnessError(f"{d}: a profile campaign (its runs ran under the profiler: no timing result to pool)")
    return Member(d, campaign, load_runs(d))


def arm_identity(campaign: Campaign, arm: str) -> dict[str, str]:
    """What must agree for an arm's runs of two campaigns to be runs of one experiment, as short strings."""
    spec = campaign.arms[arm]
    key = _obj(_obj(_obj(campaign.compile_cache).get(arm)).get("key"))
    code = key.get("code_sha256") or spec.get("script_sha256") or "?"
    env = {k: v for k, v in sorted(_obj(spec.get("env")).items()) if k not in NODE_LOCAL_ENV}
    identity = {"code": str(code)[:12], "nproc": str(spec.get("nproc"))}
    identity.update({f"env {k}": str(v) for k, v in env.items()})
    return identity


def environment_identity(campaign: Campaign) -> dict[str, str]:
    """The node facts a track can pin (fingerprint.PIN_KEYS: GPU model, driver, CUDA, torch, Triton, NCCL, Python),
    but for the node's GPU count: an arm's nproc is what the experiment fixes."""
    fp = _obj(_obj(campaign.environment).get("fingerprint"))
    fp = {"nvidia": _obj(fp.get("nvidia")), "software": _obj(fp.get("software"))}
    return {key: str(read(fp)) for key, read in PIN_KEYS.items() if key != "gpu_count"}


def gpu_uuids(campaign: Campaign) -> list[str]:
    """The UUIDs of the node's GPUs: which node a campaign ran on (free to differ within a pool)."""
    nvidia = _obj(_obj(_obj(campaign.environment).get("fingerprint")).get("nvidia"))
    gpus = nvidia.get("gpus") if isinstance(nvidia.get("gpus"), list) else []
    return [str(_obj(g).get("uuid", "?")) for g in gpus]


def experiment_identity(campaign: Campaign) -> dict[str, str]:
    """Every field that must agree between the campaigns of a pool: each arm's, then the node's."""
    out = {f"{arm} {k}": v for arm in ARMS for k, v in arm_identity(campaign, arm).items()}
    out.update(environment_identity(campaign))
    return out


def differences(members: list[Member]) -> list[str]:
    """One line per field that is not the same in every campaign: the field and each campaign's value."""
    ids = [experiment_identity(m.campaign) for m in members]
    lines = []
    for field in dict.fromkeys(k for i in ids for k in i):  # first-seen order: the arms' fields, then the node's
        values = [i.get(field, "(unset)") for i in ids]
        if len(set(values)) > 1:
            lines.append(f"{md_text(field)}: " + ", ".join(f"{md_text(v)} ({md_text(m.folder.name)})"
                                                        for v, m in zip(values, members)))
    return lines


def repeated_seeds(members: list[Member]) -> dict[str, list[int]]:
    """Per arm, the seeds that more than one ok run of the pool ran with."""
    out = {}
    for arm in ARMS:
        seeds = [r.seed for m in members for r in ok_runs(m.runs, arm) if isinstance(r.seed, int)]
        out[arm] = sorted({s for s in seeds if seeds.count(s) > 1})
    return out


@dataclass
class MeanInterval:
    n: int
    mean: float
    sd: float
    low: float
    high: float
    p_lower: float  # one-sided: the true mean is below 0
    confidence: float


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> MeanInterval | None:
    """One-sample t interval of the mean and the one-sided test that it is below zero (the record block's
    p_value against 0); None under 2 values."""
    n = len(values)
    if n < 2:
        return None
    import scipy.stats  # deferred, as in harness.comparison

    mean, sd = statistics.fmean(values), statistics.stdev(values)
    se = sd / math.sqrt(n)
    if se == 0:
        return MeanInterval(n, mean, 0.0, mean, mean, 0.0 if mean < 0 else 1.0, confidence)
    q = scipy.stats.t.ppf(0.5 + confidence / 2, n - 1)
    return MeanInterval(n, mean, sd, mean - q * se, mean + q * se, p_value(values, 0.0), confidence)


def _campaign_row(m: Member, pairs: list[float]) -> str:
    base, cand = arm_values(m.runs, BASELINE, "train_time_s"), arm_values(m.runs, CANDIDATE, "train_time_s")
    ratio = f"{statistics.fmean(cand) / statistics.fmean(base):.3f}" if base and cand else "-"
    uuids = gpu_uuids(m.campaign)
    gpu = environment_identity(m.campaign)["gpu"] + (f" ({', '.join(u.removeprefix('GPU-')[:8] for u in uuids)})"
                                                     if uuids else "")
    gpu, name = md_cell(gpu), md_cell(m.folder.name)
    seeds = sorted({r.seed for r in m.runs if isinstance(r.seed, int)})
    seed_text = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else (str(seeds[0]) if seeds else "-")
    return (f"| {name} | {gpu} | {seed_text} | {mean_sd_text(base, 3)} | {mean_sd_text(cand, 3)} | {ratio} | "
            + (", ".join(f"{x:+.3f}" for x in pairs) or "-") + " |")


def pooled_markdown(folders: list[str | Path], allow_differences: bool = False) -> str:
    """The pool's report: campaigns, what differs, repeated seeds, the pooled pair differences, val loss and stage
    times over all ok runs. HarnessError where the campaigns differ and allow_differences is off."""
    if len(folders) < 2:
        raise HarnessError("pool needs two compare campaigns or more")
    members = [load_member(f) for f in folders]
    names = [m.folder.resolve() for m in members]
    if len(set(names)) < len(names):
        raise HarnessError("the same campaign is named twice: its runs would count twice")
    tracks = {str(_obj(m.campaign.track).get("name")) for m in members}
    if len(tracks) > 1:
        raise HarnessError("campaigns of different tracks: " + ", ".join(sorted(tracks)))
    diff = differences(members)
    if diff and not allow_differences:
        raise HarnessError("the campaigns are not runs of one experiment (--allow-differences pools them anyway): "
                           + "; ".join(diff))
    lines = [f"# Pool of {len(members)} compare campaigns ({md_text(tracks.pop())})", "",
             "Times compare only within a campaign (each pair ran on one node); losses and stage times pool over "
             "every ok run.", "",
             "| campaign | GPU (its UUID: the node) | seeds | baseline train time (s) | candidate train time (s) "
             "| candidate / baseline | per-pair differences (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    pairs_of = [pair_differences(m.runs) for m in members]  # each campaign's pairs, each pair on its one node
    lines += [_campaign_row(m, pairs) for m, pairs in zip(members, pairs_of)]
    if diff:
        lines += ["", "**Not one experiment**: these differ between the campaigns (pooled anyway, "
                  "--allow-differences):", ""] + [f"- {d}" for d in diff]
    repeats = repeated_seeds(members)
    for arm in ARMS:
        if repeats[arm]:
            lines += ["", f"The {arm}'s seeds {', '.join(map(str, repeats[arm]))} ran more than once: where the "
                      "script reads SPEEDRUN_SEED, those runs are not independent draws and the intervals below are "
                      "too narrow."]
    pairs = [x for campaign_pairs in pairs_of for x in campaign_pairs]
    lines.append("")
    interval = mean_interval(pairs)
    if interval is None:
        lines.append(f"- pairs: {len(pairs)}: too few for an interval (2 or more)")
    else:
        lines.append(f"- time (candidate - baseline), over {interval.n} pairs: {interval.mean + 0.0:+.3f} s ± "
                     f"{interval.sd:.3f} ({interval.confidence:.0%} CI {interval.low + 0.0:+.3f} to "
                     f"{interval.high + 0.0:+.3f} s; one-sided t test that the candidate is faster: "
                     f"p={interval.p_lower:.4f})")
    all_runs = [r for m in members for r in m.runs]
    for table in (val_curve_table(all_runs), pooled_stage_time_table([(m.folder, m.runs) for m in members])):
        if table:
            lines += [""] + table
    return "\n".join(lines) + "\n"
