"""`speedrun` command line: argument parsing only; each command calls one function of harness/commands/ that
tests call too.

A command's module is imported only when that command runs: the commands pull in numpy, scipy, torch, rich
and matplotlib, and `speedrun --help` or a bad flag must answer at once. These are the deferred imports of
the CLI; everywhere else imports sit at the top of the module.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys

from harness.errors import HarnessError
from harness.fsio import is_disk_full
from harness.rules import ALPHA, DEFAULT_COMPARE_RUNS, DEFAULT_RUNS


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    for v in values:
        _check_block_number(v)
    return values


# The block computes in float32 tensors (torch.std_mean): past this a number becomes inf there.
_BLOCK_LIMIT = 3.0e38


def _check_block_number(v: float) -> float:
    """A number the record block can hold: nan or inf would print as a name (not valid Python)."""
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {v}")
    if abs(v) > _BLOCK_LIMIT:
        raise argparse.ArgumentTypeError(f"{v} is too large for the block's float32 tensors")
    return v


def _block_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return _check_block_number(v)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {v}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="speedrun", description="Reproducible NanoGPT-speedrun campaigns, statistics and verification.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a campaign: N runs of a track on this node")
    r.add_argument("track", nargs="?", help="track name (tiny, short, ...) or the path of a track folder")
    r.add_argument("--runs", type=_positive_int, default=None, help=f"number of runs (default {DEFAULT_RUNS})")
    r.add_argument("--script", help="run this script instead of the track's frozen one, against the track's target")
    r.add_argument("--nproc", type=_positive_int, help="processes (GPUs) per run; default: the track's nproc")
    r.add_argument("--out", help="campaign folder (default results/<track>/<timestamp>)")
    r.add_argument("--resume", metavar="CAMPAIGN", help="finish an interrupted campaign without redoing finished runs")
    r.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment for every run (repeatable)")
    r.add_argument("--data-path", metavar="ROOT", help="folder holding data/fineweb10B/ (the competition's DATA_PATH; default: the repo root)")
    r.add_argument("--seed-base", type=int, default=0, help="run k gets SPEEDRUN_SEED=seed_base+k")
    r.add_argument("--no-telemetry", action="store_true", help="do not sample GPU telemetry")
    r.add_argument("--lock-clocks", nargs="?", const=0, type=int, metavar="MHZ",
                   help="rented nodes only, as root: persistence on and SM clock locked (restored afterwards)")
    r.add_argument("--until-significant", action="store_true",
                   help="stop once an anytime-valid sequential test decides (error rate stays at alpha)")
    r.add_argument("--max-runs", type=_positive_int, help="with --until-significant: at most this many runs")
    r.add_argument("--quiet", action="store_true", help="no live progress display")

    s = sub.add_parser("stats", help="print the record block for given losses and times")
    s.add_argument("--target", type=_block_float, required=True)
    s.add_argument("--losses", type=_floats, required=True, help="comma-separated final val losses")
    s.add_argument("--times", type=_floats, required=True, help="comma-separated train times in seconds")
    s.add_argument("--no-p", action="store_true", help="omit the t-test line (re-timed previous record style)")

    v = sub.add_parser("verify", help="recompute a record's claims from its logs, check by check")
    v.add_argument("path", nargs="?", help="a campaign folder or a folder of competition logs")
    v.add_argument("--each", metavar="FOLDER", help="verify every record folder under FOLDER, one line each")
    v.add_argument("--target", type=float, help="target loss when the folder does not say")
    v.add_argument("--alpha", type=float, default=None, help=f"significance level in (0, 0.5] (default {ALPHA:g})")

    rep = sub.add_parser("report", help="rewrite record.md and plots of a campaign and print its summary")
    rep.add_argument("campaign")

    po = sub.add_parser("pool", help="compare campaigns of the same two codes read as one: more runs across sessions")
    po.add_argument("campaigns", nargs="+", metavar="CAMPAIGN")
    po.add_argument("--out", metavar="FILE", help="also write the report (markdown) to FILE")
    po.add_argument("--allow-differences", action="store_true",
                    help="pool campaigns whose code, environment or software differ (the report lists how)")

    e = sub.add_parser("env", help="this node's environment fingerprint; --check TRACK compares it with the pins")
    e.add_argument("--check", metavar="TRACK")
    e.add_argument("--json", action="store_true")

    a = sub.add_parser("autotune", help="benchmark a track's Triton kernel configs here and rewrite its frozen file")
    a.add_argument("track")

    d = sub.add_parser("data", help="download or adopt data shards, with a sha256 manifest")
    d.add_argument("dataset", choices=["fineweb"])
    d.add_argument("--shards", type=_positive_int, help="train shards (default: the track's [data] train_shards)")
    d.add_argument("--track", default="short", help="whose [data] train_shards is the default (default short)")
    d.add_argument("--data-path", metavar="ROOT", help="write to ROOT/data/fineweb10B (default: the repo root, "
                                                       "where runs look without --data-path)")
    d.add_argument("--from", dest="from_dir", metavar="DIR", help="adopt shards already in DIR instead of downloading")

    c = sub.add_parser("compare", help="baseline vs candidate on this node, interleaved A B B A ...")
    c.add_argument("baseline", help="track name, script path, record log or record folder")
    c.add_argument("candidate", help="track name, script path, record log or record folder")
    c.add_argument("--runs", type=_positive_int, default=DEFAULT_COMPARE_RUNS,
                   help=f"runs per arm (default {DEFAULT_COMPARE_RUNS})")
    c.add_argument("--until-significant", action="store_true")
    c.add_argument("--max-runs", type=_positive_int)
    c.add_argument("--seed-base", type=int, default=0,
                   help="pair k (both of its runs) gets SPEEDRUN_SEED=seed_base+k (default 0)")

    pr = sub.add_parser("profile", help="one run of each arm with the PyTorch profiler over the steps after --step; "
                                        "their kernels side by side")
    pr.add_argument("baseline", help="track name, script path, record log or record folder")
    pr.add_argument("candidate", nargs="?", help="a second one, profiled after the first (optional)")
    pr.add_argument("--step", type=_positive_int, required=True,
                    help="open the profiler when the script prints step:STEP/... (the steps after it are profiled)")
    pr.add_argument("--steps", type=_positive_int, default=1, help="steps to profile (default 1)")
    pr.add_argument("--track", help="the track whose target applies when no side is a track")

    for cmd in (c, pr):  # two arms on this node
        cmd.add_argument("--nproc", type=_positive_int)
        cmd.add_argument("--out")
        cmd.add_argument("--env", action="append", metavar="KEY=VALUE")
        cmd.add_argument("--data-path", metavar="ROOT",
                         help="folder holding data/fineweb10B/ (the competition's DATA_PATH; default: the repo root)")
        cmd.add_argument("--no-telemetry", action="store_true")
        cmd.add_argument("--quiet", action="store_true", help="no live progress display")

    sc = sub.add_parser("scaling", help="the same script on 1, 2, ... K GPUs of this node: step-time scaling, "
                                        "loss at equal steps")
    sc.add_argument("track", help="track name (tiny, short, ...) or the path of a track folder")
    sc.add_argument("--gpus", required=True, help="GPU counts to compare, comma-separated (e.g. 1,2,4,8)")
    sc.add_argument("--runs", type=_positive_int, default=1, help="rounds; each runs every count once (default 1)")
    sc.add_argument("--script", help="run this script instead of the track's frozen one")
    sc.add_argument("--out", help="campaign folder (default results/<track>/<timestamp>)")
    sc.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment for every run")
    sc.add_argument("--data-path", metavar="ROOT", help="folder holding data/fineweb10B/ (the competition's DATA_PATH; default: the repo root)")
    sc.add_argument("--no-telemetry", action="store_true")
    sc.add_argument("--quiet", action="store_true", help="no live progress display")

    pl = sub.add_parser("plan", help="runs needed for a given power, fixed-N vs sequential")
    pl.add_argument("--target", type=float)
    pl.add_argument("--sigma", type=float)
    pl.add_argument("--mean", type=float)
    pl.add_argument("--power", type=float, default=0.9)
    pl.add_argument("--alpha", type=float, default=ALPHA)
    pl.add_argument("--from", dest="from_campaign", metavar="CAMPAIGN")

    b = sub.add_parser("bench-sequential", help="simulate the sequential test's error rate and runs saved")
    b.add_argument("--sims", type=_positive_int, default=20000)

    # The compile cache (harness/compile_cache.py): flags of the campaign commands, and `speedrun cache ...`.
    for campaign_parser in (r, c, sc):
        campaign_parser.add_argument("--no-cache", action="store_true",
                                     help="leave torch's compile caches as they are (no harness compile cache)")
        campaign_parser.add_argument("--cache-dir", metavar="DIR",
                                     help="compile cache root (default $SPEEDRUN_CACHE_DIR or cache/compile)")
    ca = sub.add_parser("cache", help="the harness's compile cache: list, export to an archive, import one")
    ca_sub = ca.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    for name, help_text in (("list", "cache folders, their keys and sizes"),
                            ("export", "write this node's filled cache folders to one xz tar archive"),
                            ("import", "check an exported archive (or its parts) against this node and unpack it")):
        cp = ca_sub.add_parser(name, help=help_text)
        cp.add_argument("--cache-dir", metavar="DIR", help="compile cache root (default $SPEEDRUN_CACHE_DIR or "
                                                           "cache/compile)")
        if name == "export":
            cp.add_argument("--out", metavar="FILE", help="archive path (default speedrun-compile-cache-<time>.tar.xz)")
            cp.add_argument("--part-size", metavar="SIZE", help="split into parts FILE.001, ... of at most SIZE "
                                                                "(e.g. 15M) each")
            cp.add_argument("--lean", action="store_true", help="leave out Triton's intermediate IR files "
                                                                "(a cache hit loads the binary and its metadata)")
            cp.add_argument("--only", action="append", metavar="KEY",
                            help="export only the folder of this key (as `cache list` prints it, or a prefix of "
                                 "it); repeatable")
        if name == "import":
            cp.add_argument("files", nargs="+", metavar="FILE", help="the archive, or every part of a split export")
            cp.add_argument("--only", action="append", metavar="KEY",
                            help="import only the archive's folder of this key (or a prefix of it); repeatable")

    # Record code: a record log or record folder wherever a script is accepted; extract, prefetch, env --for.
    for cmd in (r, c, pr, sc):
        cmd.add_argument("--add-file", action="append", metavar="PATH",
                         help="place this file beside code extracted from a record log (a module the log does "
                              "not embed; recorded as not from the log); repeatable")
        cmd.add_argument("--run-anyway", action="store_true",
                         help="launch even when the pre-flight finds the record's PyTorch or downloads differ")
    c.add_argument("--track", help="the track whose target applies when neither side is a track")
    e.add_argument("--for", dest="for_log", metavar="LOG", help="the install spec of a record log's environment")
    x = sub.add_parser("extract", help="write the code embedded in a record log (or a record folder's claim) "
                                       "and print its sha256")
    x.add_argument("path", help="a record log, or a record or campaign folder")
    x.add_argument("--out", help="folder to write the files into (default ./code-<hash>)")
    pf = sub.add_parser("prefetch", help="fetch what a script downloads at run time into the offline cache")
    pf.add_argument("path", help="a script, a record log, or a record folder")
    pf.add_argument("--from", dest="from_dirs", action="append", metavar="DIR",
                    help="adopt from a folder laid out as the Hugging Face hub cache (and tokenizer files) "
                         "instead of downloading; repeatable")
    pf.add_argument("--data-path", help="data root whose data/prefetch/ holds the cache (default DATA_PATH or "
                                        "the repository root)")
    return p


def _env_pairs(pairs):
    from harness.campaign import parse_env_pairs  # deferred (see the module docstring)

    return parse_env_pairs(pairs)


def dispatch(args: argparse.Namespace) -> int:
    # Every import below is deferred on purpose (see the module docstring).
    if args.command in ("run", "compare", "scaling"):
        from harness.compile_cache import apply_options

        apply_options(no_cache=args.no_cache, cache_dir=args.cache_dir)
    if args.command == "cache":
        from harness.commands.cache import cmd_cache_export, cmd_cache_import, cmd_cache_list

        if args.cache_command == "list":
            return cmd_cache_list(args.cache_dir)
        if args.cache_command == "export":
            return cmd_cache_export(out=args.out, part_size=args.part_size, cache_dir=args.cache_dir, lean=args.lean,
                                    only=args.only)
        return cmd_cache_import(args.files, cache_dir=args.cache_dir, only=args.only)
    if args.command == "run":
        from harness.commands.run import cmd_run

        return cmd_run(args)
    if args.command == "stats":
        from harness.commands.stats import cmd_stats

        return cmd_stats(args.losses, args.times, args.target, with_p=not args.no_p)
    if args.command == "verify":
        from harness.commands.verify import cmd_verify, cmd_verify_each

        if (args.path is None) == (args.each is None):
            raise HarnessError("verify takes a folder, or --each FOLDER (not both)")
        if args.each is not None:
            return cmd_verify_each(args.each, target=args.target, alpha=args.alpha)
        return cmd_verify(args.path, target=args.target, alpha=args.alpha)
    if args.command == "report":
        from harness.commands.report import cmd_report

        return cmd_report(args.campaign)
    if args.command == "pool":
        from harness.commands.pool import cmd_pool

        return cmd_pool(args.campaigns, out=args.out, allow_differences=args.allow_differences)
    if args.command == "env":
        from harness.commands.env import cmd_env, cmd_env_for

        if args.for_log:
            return cmd_env_for(args.for_log)
        return cmd_env(check_track=args.check, as_json=args.json)
    if args.command == "autotune":
        from harness.commands.autotune import cmd_autotune

        return cmd_autotune(args.track)
    if args.command == "data":
        from harness.commands.data import cmd_data

        return cmd_data(args.dataset, shards=args.shards, data_path=args.data_path, from_dir=args.from_dir,
                        track=args.track)
    if args.command == "compare":
        from harness.commands.compare import cmd_compare

        return cmd_compare(args.baseline, args.candidate, runs=args.runs, until_significant=args.until_significant,
                           max_runs=args.max_runs, out=args.out, env=_env_pairs(args.env), nproc=args.nproc,
                           data_path=args.data_path, telemetry=not args.no_telemetry, quiet=args.quiet,
                           add_files=args.add_file, track=args.track, run_anyway=args.run_anyway,
                           seed_base=args.seed_base)
    if args.command == "profile":
        from harness.commands.profile import cmd_profile

        return cmd_profile(args.baseline, args.candidate, step=args.step, steps=args.steps, nproc=args.nproc,
                           env=_env_pairs(args.env), data_path=args.data_path, out=args.out,
                           telemetry=not args.no_telemetry, quiet=args.quiet, add_files=args.add_file,
                           track=args.track, run_anyway=args.run_anyway)
    if args.command == "scaling":
        from harness.commands.scaling import cmd_scaling

        return cmd_scaling(args.track, args.gpus, runs=args.runs, out=args.out, env=_env_pairs(args.env),
                           script=args.script, data_path=args.data_path, telemetry=not args.no_telemetry,
                           quiet=args.quiet, add_files=args.add_file, run_anyway=args.run_anyway)
    if args.command == "plan":
        from harness.commands.plan import cmd_plan

        return cmd_plan(target=args.target, sigma=args.sigma, mean=args.mean, power=args.power, alpha=args.alpha,
                        from_campaign=args.from_campaign)
    if args.command == "extract":
        from harness.commands.extract import cmd_extract

        return cmd_extract(args.path, out=args.out)
    if args.command == "prefetch":
        from harness.commands.prefetch import cmd_prefetch

        return cmd_prefetch(args.path, from_dirs=args.from_dirs, data_path=args.data_path)
    if args.command == "bench-sequential":
        from harness.commands.bench_sequential import cmd_bench_sequential

        return cmd_bench_sequential(sims=args.sims)
    raise AssertionError(args.command)


def _interrupt_on_sigterm() -> None:
    """A CI cancel or `timeout` sends SIGTERM: stop like Ctrl-C, so the current run's process group is
    stopped and the campaign is marked interrupted (resumable) rather than left half-written."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # as a program, not when tests call main() in-process
        _interrupt_on_sigterm()
    try:
        return dispatch(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: everything written so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:  # a full disk under any command: one line, not a traceback
        if not is_disk_full(e):
            raise
        print(f"error: {e.filename or 'a write'}: no space left on device", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
