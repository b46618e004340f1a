"""A campaign's results on disk: campaign.json and runs/<k>/run.json, read and written only here.

Layout (docs/DESIGN.md "Campaigns and results"):
    <campaign>/campaign.json          what was asked, the arms, the schedule, environment, pins verdict, status
    <campaign>/runs/<k>/output.txt    the run's full stdout+stderr
    <campaign>/runs/<k>/logs/*.txt    the script's own log (scripts write logs/<uuid>.txt in their cwd)
    <campaign>/runs/<k>/run.json      the parsed result: status, reason, final loss and time, val curve, ...
    <campaign>/record.md, plots/      written by the command that ran the campaign (record_md.py)

What every reader means by the same words is defined here once: a finished run, an ok run, the claim arm,
a run's log, the kinds of campaign and the arms of a comparison. `Run` and `Campaign` are the one field list
of each file: the engine writes through them and every reader gets them back (load_runs, load_campaign, ...).

Reading a file into its type follows one rule, so that a hand-edited file is shown as it is and never refused by
a renderer:
- a field the file holds keeps its value exactly as the JSON holds it: nothing is converted or checked (a
  "final_val_loss": "3.27" stays a string; renderers show what is not a number as it is, statistics take
  float() of it as they always did);
- a field the file does not hold reads as None, like null (every field's default; None means "not recorded");
- a key that is not a field is kept in `extra` (name -> value), so nothing the file holds is lost.
Nested objects (a campaign's track, arms, environment; a run's telemetry) stay the dicts the JSON holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError
from harness.fsio import read_json, read_json_object, write_json_atomic
from harness.logs import read_log_text

FORMAT_VERSION = 1
CAMPAIGN_FILE = "campaign.json"
RUN_FILE = "run.json"
RUNS_FOLDER = "runs"

# Run statuses: a finished run (ok or failed) is kept by --resume; an interrupted one is redone.
OK, FAILED, INTERRUPTED = "ok", "failed", "interrupted"
FINISHED = (OK, FAILED)

# The arms of a comparison (comparison.balanced_order schedules them A B B A).
BASELINE, CANDIDATE = "baseline", "candidate"


# ---------------------------------------------------------------------------------------------------------
# Kinds of campaign: one table from a kind to its claim arm, record.md's timing sections, plots and stop rule.
# Sections, plots and stop rules are named here and resolved by record_md.py, plots.py and stop_rules.py,
# which sit above this module.


def _first_arm(campaign: Campaign) -> str:
    return list(campaign.arms)[0]


def _candidate(campaign: Campaign) -> str:
    return CANDIDATE


def _most_processes(campaign: Campaign) -> str:
    """The largest GPU count: the configuration a record would run."""
    arms = campaign.arms
    return max(arms, key=lambda a: int(arms[a]["nproc"]))


@dataclass(frozen=True)
class Kind:
    name: str
    claim_arm: Callable[[Campaign], str]  # (campaign) -> the arm whose numbers are the claim
    claim_label: Callable[[str], str]  # (claim arm) -> how the verdict line names the claim ("" for a plain run)
    sections: tuple[str, ...]  # record.md's "Timing and Validation" sections, in order (record_md.SECTIONS)
    plots: tuple[str, ...]  # plots/<name>.png (plots.PLOTS)
    stop_rule: str  # the --until-significant rule (stop_rules.RULES)


RUN, COMPARE, SCALING = "run", "compare", "scaling"
KINDS = {
    RUN: Kind(RUN, _first_arm, lambda arm: "", ("claim_block",), ("clocks_power", "val_loss"), "one-sample"),
    COMPARE: Kind(COMPARE, _candidate, lambda arm: "the candidate's claim", ("claim_block", "baseline_block"),
                  ("clocks_power", "val_loss"), "compare"),
    SCALING: Kind(SCALING, _most_processes, lambda arm: f"the claim of {arm}", ("count_blocks", "scaling_tables"),
                  ("clocks_power", "val_loss", "scaling"), "one-sample"),
}


def kind_of(campaign: Campaign) -> Kind:
    """The campaign's kind; a kind this harness does not know is treated as a plain run."""
    kind = campaign.kind
    return KINDS.get(kind, KINDS[RUN]) if isinstance(kind, str) else KINDS[RUN]


def claim_arm(campaign: Campaign) -> str:
    """The arm whose numbers are the claim: the candidate in a comparison, the largest GPU count in a scaling
    campaign (the configuration a record would run), the only arm otherwise."""
    return kind_of(campaign).claim_arm(campaign)


# ---------------------------------------------------------------------------------------------------------
# Runs


def is_ok(run: Run, arm: str | None = None) -> bool:
    return run.status == OK and (arm is None or run.arm == arm)


def ok_runs(runs: list[Run], arm: str | None = None) -> list[Run]:
    """The runs that count: finished with a final loss and time (of one arm, if named)."""
    return [r for r in runs if is_ok(r, arm)]


def failed_runs(runs: list[Run], arm: str | None = None) -> list[Run]:
    return [r for r in runs if r.status == FAILED and (arm is None or r.arm == arm)]


def finished_runs(runs: list[Run]) -> list[Run]:
    """The runs --resume keeps (ok or failed); the others are redone."""
    return [r for r in runs if r.status in FINISHED]


def arm_series(runs: list[Run], arm: str | None = None) -> tuple[list[float], list[float]]:
    """(final losses, train times) of the ok runs: the numbers of a record block."""
    good = ok_runs(runs, arm)
    return [r.final_val_loss for r in good], [r.train_time_s for r in good]


def arm_values(runs: list[Run], arm: str, key: str) -> list[float]:
    """One number (the field named key) of every ok run of an arm that has it, as floats."""
    return [float(getattr(r, key)) for r in ok_runs(runs, arm) if getattr(r, key) is not None]


def pair_differences(runs: list[Run], key: str = "train_time_s") -> list[float]:
    """candidate - baseline for every complete A/B pair of a comparison's schedule (runs 2j and 2j+1)."""
    by_index = {r.index: r for r in runs}
    out = []
    for j in range(0, (max(by_index) + 1) if by_index else 0, 2):
        pair = [by_index.get(j), by_index.get(j + 1)]
        if any(r is None or not is_ok(r) or getattr(r, key) is None for r in pair):
            continue
        arms = {r.arm: float(getattr(r, key)) for r in pair}
        if set(arms) == {BASELINE, CANDIDATE}:
            out.append(arms[CANDIDATE] - arms[BASELINE])
    return out


# ---------------------------------------------------------------------------------------------------------
# A run's files


def run_folder(campaign_dir: str | Path, index: int) -> Path:
    return Path(campaign_dir) / RUNS_FOLDER / str(index)


def log_files(run_dir: Path) -> list[Path]:
    """The script's own log files of a run, oldest first."""
    return sorted((run_dir / "logs").glob("*.txt"), key=lambda p: p.stat().st_mtime)


def run_log_path(run_dir: Path) -> Path:
    """The log a run's result is read from: the script's own (newest) log file, else its captured output."""
    files = log_files(run_dir)
    return files[-1] if files else run_dir / "output.txt"


def recorded_log_path(run_dir: Path, run: Run) -> Path | None:
    """A finished run's log: the one its run.json names (log_file, relative to the run's folder), else what
    run_log_path finds; None when neither is there."""
    named = run.log_file
    if isinstance(named, str) and (run_dir / named).is_file():
        return run_dir / named
    found = run_log_path(run_dir)
    return found if found.is_file() else None


def read_run_log(campaign_dir: Path, run: Run) -> str | None:
    """The text of a finished run's log (recorded_log_path), None where it is not there or is no log (unreadable,
    binary, oversized: logs.read_log_text): a committed campaign may leave out a log that embeds someone else's code."""
    path = recorded_log_path(run_folder(campaign_dir, run.index), run)
    if path is None:
        return None
    try:
        return read_log_text(path)[0]
    except HarnessError:
        return None


def has_run(run_dir: Path) -> bool:
    return (run_dir / RUN_FILE).is_file()


def read_run(run_dir: Path) -> Run:
    """One run.json, which must hold an object."""
    run = read_json(run_dir / RUN_FILE)
    if not isinstance(run, dict):
        raise HarnessError(f"{run_dir / RUN_FILE}: not a JSON object")
    return Run.from_json(run)


def read_run_or_empty(run_dir: Path) -> Run:
    """One run.json, or a Run of all None when it is missing or malformed: for readers that show what they
    can (plots)."""
    return Run.from_json(read_json_object(run_dir / RUN_FILE))


def _from_json(cls, data: dict, names: tuple[str, ...]):
    """The module docstring's rule: fields as the file holds them, None where it holds none, the rest in extra."""
    record = cls(**{name: data.get(name) for name in names})
    record.extra = {k: v for k, v in data.items() if k not in names}
    return record


@dataclass
class Run:
    """runs/<k>/run.json: the one field list, in the order the file holds it. A finished run (ok or failed)
    holds every field but telemetry, which is there when the run was sampled; an interrupted one holds
    INTERRUPTED_FIELDS and, when stopped by Ctrl-C, the compile fields."""

    index: int
    arm: str
    seed: int | None
    status: str
    reason: str | None = None
    returncode: int | None = None
    command: list[str] | None = None
    nproc: int | None = None
    started_unix: float | None = None
    ended_unix: float | None = None
    wall_s: float | None = None
    log_file: str | None = None  # relative to the run's folder
    final_step: int | None = None
    total_steps: int | None = None
    expected_final_step: int | None = None
    final_val_loss: float | None = None
    train_time_ms: float | None = None
    train_time_s: float | None = None
    val_curve: list | None = None  # [[step, val_loss], ...]
    peak_memory_allocated_mib: float | None = None
    peak_memory_reserved_mib: float | None = None
    source_sha256: str | None = None
    versions: dict | None = None  # python, torch, cuda, triton as the log's header names them
    gpus: list | None = None
    timed_window_unix: list | None = None  # [first step line, final step line]
    log_problems: list | None = None
    compile_warmup_s: float | None = None
    compile_cache: dict | None = None
    telemetry: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # read keys that are no field; never written

    @classmethod
    def from_json(cls, data: dict) -> Run:
        return _from_json(cls, data, RUN_FIELDS)

    def to_json(self, names: tuple[str, ...]) -> dict:
        return {name: getattr(self, name) for name in RUN_FIELDS if name in names}


RUN_FIELDS = tuple(f.name for f in fields(Run) if f.name != "extra")
FINISHED_FIELDS = tuple(name for name in RUN_FIELDS if name != "telemetry")  # + "telemetry" when sampled
INTERRUPTED_FIELDS = ("index", "arm", "seed", "status", "reason", "started_unix", "ended_unix")
COMPILE_FIELDS = ("compile_warmup_s", "compile_cache")


def write_run(run_dir: Path, run: Run, names: tuple[str, ...] = RUN_FIELDS) -> Run:
    """Write run.json with the named fields of run; returns the run as a reader gets it back (the fields not
    written read as None)."""
    data = run.to_json(names)
    write_json_atomic(run_dir / RUN_FILE, data)
    return Run.from_json(data)


def load_runs(campaign_dir: str | Path) -> list[Run]:
    """run.json of every run in schedule order (runs not started yet are absent)."""
    runs_dir = Path(campaign_dir) / RUNS_FOLDER
    out = []
    for d in sorted(runs_dir.glob("*"), key=lambda p: (len(p.name), p.name)):
        if d.is_dir() and d.name.isdigit() and (d / RUN_FILE).exists():
            out.append(Run.from_json(read_json(d / RUN_FILE)))
    return out


def run_of(runs: list[Run], index: int) -> Run:
    return next(r for r in runs if r.index == index)


# ---------------------------------------------------------------------------------------------------------
# campaign.json

CAMPAIGN_KEYS = ("id", "track", "arms", "schedule")  # what every reader of campaign.json relies on


@dataclass
class Campaign:
    """campaign.json: the one field list, in the order the file holds it. What was asked comes first; a
    comparison, a scaling campaign and --until-significant add their own field; the engine then keeps status
    (and stop_reason, triton_autotune) up to date in the file as the campaign goes. Optional fields that are
    None are not written."""

    format: int
    kind: str
    id: str
    created: str  # ISO 8601, UTC
    command: list[str]
    track: dict  # tracks.Track.to_dict() of the first arm
    arms: dict  # arm name -> campaign.Arm.to_dict()
    schedule: list[str]  # arm names, in run order
    seeds: list[int]  # one per scheduled run
    telemetry: bool
    environment: dict  # fingerprint.campaign_env()
    compile_cache: dict  # compile_cache.campaign_record()
    compare: dict | None = None  # a comparison's two specs and its order
    scaling: dict | None = None  # a scaling campaign's GPU counts and rounds
    until_significant: dict | None = None  # {"max_runs": N[, "kind": stop rule]}
    profile: dict | None = None  # speedrun profile: the step window and each arm's spec (no timing result)
    status: str | None = None  # running, complete, stopped-early, interrupted
    stop_reason: str | None = None
    triton_autotune: dict | None = None  # the configs runs 2..N used (compile_cache.autotune_record)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # read keys that are no field; never written

    @classmethod
    def from_json(cls, data: dict) -> Campaign:
        return _from_json(cls, data, CAMPAIGN_FIELDS)

    def to_json(self) -> dict:
        optional = ("compare", "scaling", "until_significant", "profile", "status", "stop_reason", "triton_autotune")
        return {name: getattr(self, name) for name in CAMPAIGN_FIELDS
                if name not in optional or getattr(self, name) is not None}


CAMPAIGN_FIELDS = tuple(f.name for f in fields(Campaign) if f.name != "extra")


def campaign_path(campaign_dir: str | Path) -> Path:
    return Path(campaign_dir) / CAMPAIGN_FILE


def is_campaign(folder: str | Path) -> bool:
    return campaign_path(folder).exists()


def load_campaign(campaign_dir: str | Path) -> Campaign:
    d = Path(campaign_dir)
    if not d.is_dir():
        raise HarnessError(f"{d}: no such campaign folder")
    if not campaign_path(d).is_file():
        raise HarnessError(f"{d}: not a campaign folder (no campaign.json)")
    campaign = read_json(campaign_path(d))
    if not isinstance(campaign, dict):
        raise HarnessError(f"{campaign_path(d)}: not a JSON object")
    missing = [k for k in CAMPAIGN_KEYS if k not in campaign]
    if missing:
        raise HarnessError(f"{campaign_path(d)}: missing {', '.join(map(repr, missing))} (not written by speedrun?)")
    return Campaign.from_json(campaign)


def read_campaign_or_empty(campaign_dir: str | Path) -> Campaign:
    """campaign.json, or a Campaign of all None when it is missing or malformed: for readers that show what they
    can (plots)."""
    return Campaign.from_json(read_json_object(campaign_path(campaign_dir)))


def read_campaign_json(campaign_dir: str | Path) -> dict:
    """campaign.json as it is, unchecked (a resume re-reads its own file under the lock)."""
    return read_json(campaign_path(campaign_dir))


def read_campaign_object(campaign_dir: str | Path) -> Campaign:
    """campaign.json, which must hold an object, with no key required (verify judges what is there)."""
    campaign = read_campaign_json(campaign_dir)
    if not isinstance(campaign, dict):
        raise HarnessError(f"{campaign_path(campaign_dir)}: not a JSON object")
    return Campaign.from_json(campaign)


def write_campaign(campaign_dir: str | Path, campaign: dict) -> Path:
    return write_json_atomic(campaign_path(campaign_dir), campaign)
