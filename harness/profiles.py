"""Profiles of training steps (`speedrun profile`): reading what harness/profile_hook wrote into a run's folder,
sorting its kernels into kinds of work, and the side-by-side comparison of two arms per profiled step.

A run's `profile/kernels.json` comes from the run's own process, so it is checked like any file a run wrote:
a malformed one is one error line, never a traceback, and kernel names are data (never markup)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.fsio import read_json_object

PROFILE_FOLDER = "profile"
KERNELS_FILE = "kernels.json"

# Kinds of work, first match wins, on the kernel's (or, on a CPU, the op's) name in lower case. Inductor names
# its generated Triton kernels triton_poi_ (pointwise), triton_red_ / triton_per_ (reductions) and
# triton_tem_ (templates: its own matmuls, FlexAttention); cuBLAS's Hopper kernels are nvjet_* and sm90_xmma_*.
KINDS = (
    ("attention", re.compile(r"flash|fmha|flex|attention|attn")),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|wgmma|cublas|aten::(mm|addmm|bmm|matmul|linear)\b")),
    # Inductor's templates are its own matmuls and FlexAttention's kernels; the name alone does not say which
    ("Inductor template", re.compile(r"^triton_tem_")),
    ("Inductor pointwise", re.compile(r"^triton_poi_")),
    ("Inductor reduction", re.compile(r"^triton_(red|per)_")),
    ("communication", re.compile(r"nccl|all_reduce|allreduce|reduce_scatter|all_gather")),
    ("copy / fill", re.compile(r"memcpy|memset|copy_|fill_|cat_|elementwise_kernel.*copy")),
)
OTHER = "other"


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pattern in KINDS if pattern.search(low)), OTHER)


@dataclass(frozen=True)
class Kernel:
    name: str
    calls: int
    total_us: float


@dataclass(frozen=True)
class Profile:
    """The profiled window of one run: `steps` training steps after step `first_step - 1`."""
    device: str  # "cuda": GPU kernels; "cpu": CPU ops' self time (no GPU)
    first_step: int
    last_step: int | None  # None: the run ended inside the window
    steps: int | None
    window_s: float
    kernels: tuple[Kernel, ...]

    @property
    def busy_us(self) -> float:
        """Device time of the whole window (the kernels' sum, the hook's "(other N kernels)" line included)."""
        return sum(k.total_us for k in self.kernels)

    def per_step_ms(self, us: float) -> float:
        return us / 1000.0 / (self.steps or 1)

    def by_kind(self) -> dict[str, float]:
        """Microseconds per kind of work, every kind listed (0 where none ran)."""
        out = {kind: 0.0 for kind, _ in KINDS} | {OTHER: 0.0}
        for k in self.kernels:
            out[kind_of(k.name)] += k.total_us
        return out


def load_profile(run_dir: str | Path) -> Profile | None:
    """The run's profile, or None when it wrote none (the run never reached the step, or it failed first)."""
    path = Path(run_dir) / PROFILE_FOLDER / KERNELS_FILE
    if not path.is_file():
        return None
    doc = read_json_object(path)

    def bad(what: str):
        return HarnessError(f"{path}: {what}; not a profile written by speedrun profile")

    if doc.get("format") != 1:
        raise bad(f"format {doc.get('format')!r}, expected 1")
    if doc.get("device") not in ("cuda", "cpu"):
        raise bad("'device' must be 'cuda' or 'cpu'")
    first, last, steps = doc.get("first_step"), doc.get("last_step"), doc.get("steps")
    if not _whole(first) or first < 1:
        raise bad("'first_step' must be a whole number >= 1")
    if last is not None and not (_whole(last) and last >= first and steps == last - first + 1):
        raise bad("'last_step' and 'steps' must give the window's steps")
    if last is None and steps is not None:
        raise bad("'steps' without 'last_step'")
    window_s = doc.get("window_s")
    if not (_number(window_s) and window_s >= 0):
        raise bad("'window_s' must be a non-negative number")
    rows = doc.get("kernels")
    if not isinstance(rows, list):
        raise bad("'kernels' must be a list")
    kernels = []
    for i, r in enumerate(rows):
        if not (isinstance(r, dict) and isinstance(r.get("name"), str) and _whole(r.get("calls"))
                and r["calls"] >= 0 and _number(r.get("total_us")) and r["total_us"] >= 0):
            raise bad(f"kernel {i} needs a name, whole calls and non-negative total_us")
        kernels.append(Kernel(r["name"], r["calls"], float(r["total_us"])))
    return Profile(doc["device"], first, last, steps, float(window_s), tuple(kernels))


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class KindRow:
    kind: str
    ms_per_step: dict[str, float]  # arm -> device milliseconds per step


def kinds_side_by_side(profiles: dict[str, Profile]) -> list[KindRow]:
    """Per kind of work, each arm's time per profiled step; kinds none of the arms ran are left out; the total
    last."""
    per_arm = {arm: p.by_kind() for arm, p in profiles.items()}
    kinds = [kind for kind, _ in KINDS] + [OTHER]
    rows = [KindRow(kind, {arm: profiles[arm].per_step_ms(per_arm[arm][kind]) for arm in profiles})
            for kind in kinds if any(per_arm[arm][kind] > 0 for arm in profiles)]
    rows.append(KindRow("all kernels", {arm: p.per_step_ms(p.busy_us) for arm, p in profiles.items()}))
    return rows


def top_kernels(profile: Profile, n: int = 15) -> list[tuple[Kernel, str, float]]:
    """The n longest kernels as (kernel, kind, milliseconds per step)."""
    return [(k, kind_of(k.name), profile.per_step_ms(k.total_us)) for k in profile.kernels[:n]]


def profile_markdown(profiles: dict[str, Profile], sources: dict[str, str], top: int = 15) -> str:
    """profile.md: the window of each arm, the kinds side by side, then each arm's longest kernels."""
    arms = list(profiles)
    unit = "GPU kernel" if all(p.device == "cuda" for p in profiles.values()) else "op (CPU self time)"
    lines = ["# Profile", "",
             "One profiled run per arm (the PyTorch profiler inside the run's rank 0, from the step lines the script "
             "prints; its train time is not a timing result). Times are the sum of each "
             f"{unit}'s durations in the window, per step.", ""]
    lines += ["| arm | code | steps | window (s) | device busy (ms/step) |", "| --- | --- | --- | --- | --- |"]
    for arm, p in profiles.items():
        steps = f"{p.first_step}-{p.last_step}" if p.last_step is not None else f"{p.first_step}- (run ended)"
        lines.append(f"| {_cell(arm)} | {_cell(sources.get(arm, ''))} | {steps} | {p.window_s:.3f} | "
                     f"{p.per_step_ms(p.busy_us):.2f} |")
    lines += ["", "| kind | " + " | ".join(f"{_cell(a)} (ms/step)" for a in arms)
              + (" | difference (ms/step) |" if len(arms) == 2 else " |"),
              "| --- | " + " | ".join("---" for _ in arms) + (" | --- |" if len(arms) == 2 else " |")]
    for row in kinds_side_by_side(profiles):
        cells = [f"{row.ms_per_step[a]:.2f}" for a in arms]
        if len(arms) == 2:
            cells.append(f"{row.ms_per_step[arms[1]] - row.ms_per_step[arms[0]]:+.2f}")
        lines.append(f"| {row.kind} | " + " | ".join(cells) + " |")
    for arm, p in profiles.items():
        lines += ["", f"## {_cell(arm)}: longest {top}", "", "| ms/step | calls/step | kind | name |",
                  "| --- | --- | --- | --- |"]
        for k, kind, ms in top_kernels(p, top):
            lines.append(f"| {ms:.3f} | {k.calls / (p.steps or 1):.1f} | {kind} | `{_code(k.name)}` |")
    return "\n".join(lines) + "\n"


def profiled_runs_markdown(runs) -> str:
    """The end of profile.md: what each profiled run did besides its profile (status, val loss at each validation,
    peak memory, compile and warm-up), so that a profile of new code also says whether that code learned. Its
    train time holds the profiler's window and export, so it is left out."""
    lines = ["", "## The profiled runs", "",
             "| run | arm | status | final step | val loss (step: loss) | peak allocated (MiB) | compile and warm-up (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        curve = ", ".join(f"{int(step)}: {loss:.4f}" for step, loss in (r.val_curve or []))
        status = r.status if r.reason is None else f"{r.status}: {r.reason}"
        cells = [str(r.index), r.arm, status, _optional(r.final_step, "d"), curve or "-",
                 _optional(r.peak_memory_allocated_mib, ".0f"), _optional(r.compile_warmup_s, ".1f")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _optional(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cell(text: str) -> str:
    """Text from a run or a path, safe in a markdown table cell (no HTML, no column break, no code break)."""
    return str(text).replace("|", "\\|").replace("`", "'").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _code(name: str, limit: int = 120) -> str:
    """A kernel name inside a code span: C++ template names are long and may hold backticks or pipes."""
    name = name.replace("`", "'").replace("|", "/").replace("\n", " ")
    return name if len(name) <= limit else name[:limit - 3] + "..."
