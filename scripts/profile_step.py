"""Profile one training step of a NanoGPT-speedrun script with the PyTorch profiler (GPU, rank 0).

The script runs unchanged (through runpy, under torchrun); this wrapper watches what it prints: when the log
line of step S (`step:S/N train_time:...`) appears the profiler starts, at the line of step S+1 it stops. So the
profiled window is exactly one training step (forward, backward, optimizer), after compile and warm-up. Works for
any script that prints the competition's step lines (our tracks and the record's code).

  torchrun --standalone --nproc_per_node=1 scripts/profile_step.py --script SCRIPT --step 10 --out DIR --tag NAME
  python scripts/profile_step.py compare DIR/NAME1.json DIR/NAME2.json [--top 25]

The first writes DIR/NAME.json (every kernel: name, total CUDA time, calls), DIR/NAME.txt (the profiler's
table) and DIR/NAME.trace.json (Chrome trace); the second prints the two top-kernel lists side by side.
The script's own environment (DATA_PATH, SPEEDRUN_*) is passed through.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import re
import runpy
import sys
from pathlib import Path

STEP_LINE = re.compile(r"^step:(\d+)/\d+ train_time:")


def kernel_rows(prof, on_gpu: bool) -> list[dict]:
    """Every profiled operation or kernel with its own GPU time (CPU time on a machine without CUDA)."""
    rows = []
    for event in prof.key_averages():
        # On the GPU only the kernels themselves count: the CPU-side op that launched a kernel (aten::mm, the
        # launcher of a Triton kernel, which has the kernel's name) carries the same GPU time, and counting
        # both doubled the total.
        if on_gpu and not str(getattr(event, "device_type", "")).endswith("CUDA"):
            continue
        if on_gpu:
            self_us = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))
            cuda_us = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0))
        else:
            self_us, cuda_us = event.self_cpu_time_total, event.cpu_time_total
        if self_us > 0:
            rows.append({"name": event.key, "self_cuda_us": float(self_us), "cuda_us": float(cuda_us),
                         "calls": int(event.count)})
    rows.sort(key=lambda r: r["self_cuda_us"], reverse=True)
    return rows


def profile(args) -> int:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = Path(args.out)
    on_gpu = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    rank = int(os.environ.get("RANK", "0"))
    state = {"prof": None, "done": False}
    real_print = builtins.print

    def watching_print(*items, **kwargs):
        real_print(*items, **kwargs)
        if rank != 0 or state["done"] or kwargs.get("file") not in (None, sys.stdout):
            return
        match = STEP_LINE.match(" ".join(str(i) for i in items))
        if not match:
            return
        step = int(match.group(1))
        if step == args.step and state["prof"] is None:
            sync()
            state["prof"] = torch_profile(activities=activities)
            state["prof"].start()
        elif step == args.step + 1 and state["prof"] is not None:
            sync()
            prof = state["prof"]
            prof.stop()
            state["done"] = True
            out.mkdir(parents=True, exist_ok=True)
            rows = kernel_rows(prof, on_gpu)
            total = sum(r["self_cuda_us"] for r in rows)
            (out / f"{args.tag}.json").write_text(json.dumps({"script": args.script, "step": args.step,
                                                              "device": "cuda" if on_gpu else "cpu",
                                                              "total_self_cuda_us": total, "kernels": rows},
                                                             indent=1))
            table = prof.key_averages().table(sort_by="self_cuda_time_total" if on_gpu else "self_cpu_time_total",
                                              row_limit=60)
            (out / f"{args.tag}.txt").write_text(table)
            prof.export_chrome_trace(str(out / f"{args.tag}.trace.json"))
            real_print(f"profile: step {args.step + 1} profiled, {total / 1000:.1f} ms of GPU time in kernels; "
                       f"wrote {out / args.tag}.json/.txt/.trace.json", flush=True)

    builtins.print = watching_print
    script = str(Path(args.script).resolve())
    sys.argv = [script]
    sys.path.insert(0, str(Path(script).parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        builtins.print = real_print
    if rank == 0 and not state["done"]:
        print(f"error: step lines {args.step} and {args.step + 1} never both appeared", file=sys.stderr)
        return 1
    return 0


def kernels_only(rows: list[dict]) -> list[dict]:
    """Rows of a GPU profile written before the kernel filter (no "device" field) held the launching CPU ops too:
    drop the aten:: ops, the second of two rows with the same name and GPU time (a Triton launcher and its
    kernel) and a user kernel's launcher beside its variants."""
    kept, seen = [], set()
    for r in rows:
        mark = (r["name"], r["self_cuda_us"], r["calls"])
        if r["name"].startswith("aten::") or mark in seen or _launcher_of_variants(r, rows):
            continue
        seen.add(mark)
        kept.append(r)
    return kept


def _launcher_of_variants(row: dict, rows: list[dict]) -> bool:
    """A user Triton kernel's launcher `name` carries the time of its compiled variants `name_0`, `name_1`."""
    variants = [r for r in rows if re.fullmatch(re.escape(row["name"]) + r"_\d+", r["name"])]
    total = sum(r["self_cuda_us"] for r in variants)
    return bool(variants) and abs(total - row["self_cuda_us"]) <= 0.005 * row["self_cuda_us"]


def short_name(name: str, width: int) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def compare(args) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    for profile in (a, b):
        if "device" not in profile:  # written before kernel_rows kept the kernels alone
            profile["kernels"] = kernels_only(profile["kernels"])
            profile["total_self_cuda_us"] = sum(r["self_cuda_us"] for r in profile["kernels"])
    top_a, top_b = a["kernels"][:args.top], b["kernels"][:args.top]
    print(f"| # | {Path(args.a).stem} kernel | ms | calls | {Path(args.b).stem} kernel | ms | calls |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i in range(max(len(top_a), len(top_b))):
        cells = []
        for top in (top_a, top_b):
            if i < len(top):
                r = top[i]
                cells += [short_name(r["name"], 60).replace("|", "/"), f"{r['self_cuda_us'] / 1000:.2f}", str(r["calls"])]
            else:
                cells += ["", "", ""]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    print(f"| | total GPU time in kernels | {a['total_self_cuda_us'] / 1000:.1f} | | | "
          f"{b['total_self_cuda_us'] / 1000:.1f} | |")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        parser = argparse.ArgumentParser(prog="profile_step.py compare")
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--top", type=int, default=25)
        return compare(parser.parse_args(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", required=True)
    parser.add_argument("--step", type=int, default=10, help="profile the step after this step line")
    parser.add_argument("--out", default="profile")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args()
    if not Path(args.script).is_file():
        print(f"error: no such script: {args.script}", file=sys.stderr)
        return 2
    return profile(args)


if __name__ == "__main__":
    sys.exit(main())
