"""A record's environment, from its log header, and the pre-flight of arms that run a record's code.

The header of a competition log names the software the record ran on (`Running Python 3.12.7 ...`,
`Running PyTorch 2.10.0.dev20251210+cu126 compiled for CUDA 12.6`, `Running Triton version 3.6.0`) and the
`nvidia-smi` block names the driver and the GPUs. Those become the pins of an arm whose code comes from the
log. Before anything launches, the pre-flight prints where this node differs and STOPS when PyTorch does: a
record written for one PyTorch may not compile on another (the seed-001 record's code, written for a 2.10
nightly, failed on 2.11 after minutes of compile). It also checks what the code downloads at run time
against the download cache (`harness.prefetch`) and points the runs at that cache, offline.

`speedrun env --for LOG` prints the install spec that gives the log's versions where they are released.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.env import PIN_KEYS, version_matches
from harness.errors import HarnessError

# The pins a log header gives, in the order they are printed.
LOG_PIN_KEYS = ("python", "torch", "cuda", "triton", "driver", "gpu", "gpu_count")
_LABELS = {"python": "Python", "torch": "PyTorch", "cuda": "CUDA (PyTorch build)", "triton": "Triton",
           "driver": "NVIDIA driver", "gpu": "GPU", "gpu_count": "GPU count"}
# A pre-release or nightly in PEP 440 terms: .devN, aN, bN, rcN (the public part, before any '+local' tag).
_PRERELEASE_RE = re.compile(r"(\.dev\d*|a\d+|b\d+|rc\d+)", re.I)
PYTORCH_INDEX = "https://download.pytorch.org/whl"


def log_pins(parsed) -> dict[str, str]:
    """The environment a log header names (only what it names)."""
    pins = {"python": parsed.python_version, "torch": parsed.torch_version, "cuda": parsed.cuda_version,
            "triton": parsed.triton_version, "driver": parsed.driver_version}
    if parsed.gpus:
        names = sorted(set(parsed.gpus))
        pins["gpu"] = names[0] if len(names) == 1 else " + ".join(names)
        pins["gpu_count"] = str(len(parsed.gpus))
    return {k: str(v) for k, v in pins.items() if v and str(v) != "None"}  # CPU builds print `CUDA None`


def public_version(version: str) -> str:
    """'2.10.0.dev20251210+cu126' -> '2.10.0.dev20251210' (the local build tag dropped)."""
    return str(version).strip().split("+", 1)[0]


def is_prerelease(version: str) -> bool:
    return bool(_PRERELEASE_RE.search(public_version(version)))


def pin_differences(pins: dict[str, str], fp: dict) -> list[str]:
    """Where this node (fingerprint fp) differs from the pins, one line each."""
    nvidia = fp.get("nvidia") or {}
    out = []
    for key in LOG_PIN_KEYS:
        if key not in pins:
            continue
        want = pins[key]
        have = PIN_KEYS[key](fp) if nvidia.get("available") or key not in ("driver", "gpu", "gpu_count") else None
        label = _LABELS[key]
        if have is None:
            out.append(f"{label}: none here, {want} in the log")
        elif key == "gpu":
            names = [g.get("name") or "" for g in nvidia.get("gpus", [])]
            if not names or any(n.strip().lower() != want.strip().lower() for n in names):
                out.append(f"{label}: {have} here, {want} in the log")
        elif key == "gpu_count":
            if int(have) != int(want):
                out.append(f"{label}: {have} here, {want} in the log")
        elif key == "python":
            if str(have) != want:
                out.append(f"{label}: {have} here, {want} in the log")
        elif not version_matches(have, want):
            out.append(f"{label}: {have} here, {want} in the log")
    return out


def torch_mismatch(pins: dict[str, str], fp: dict) -> str | None:
    """The stop reason when this node's PyTorch is another version than the log's (the CUDA build tag alone
    is printed as a difference but does not stop)."""
    want = pins.get("torch")
    have = (fp.get("software") or {}).get("torch")
    if not want or (have and public_version(have) == public_version(want)):
        return None
    return (f"PyTorch {have or 'none'} here, the code was written for {want} "
            f"(a record written for one PyTorch may not compile on another)")


# ---------------------------------------------------------------------------------------------------------
# The install spec (`speedrun env --for LOG`)


def _cuda_tag(pins: dict[str, str]) -> str | None:
    """'cu126' from '2.10.0+cu126', else from the CUDA version the build names ('12.6' -> 'cu126')."""
    torch = pins.get("torch", "")
    if "+" in torch:
        return torch.split("+", 1)[1]
    cuda = pins.get("cuda")
    if cuda and re.fullmatch(r"\d+\.\d+", cuda):
        return "cu" + cuda.replace(".", "")
    return None


def install_spec(pins: dict[str, str]) -> list[str]:
    """Lines a user follows to get the pinned versions; a nightly/dev build is named as not installable."""
    lines = []
    if pins.get("python"):
        lines.append(f"python {pins['python']}   # e.g. `uv venv --python {pins['python']}`")
    torch = pins.get("torch")
    if torch:
        tag = _cuda_tag(pins)
        if is_prerelease(torch):
            lines.append(f"# torch {torch}: a nightly/dev build, not installable from the registries (PyTorch's "
                         f"nightly index keeps builds for a short while only); the release {_release_of(torch)} "
                         f"may differ from it")
        else:
            index = f" --index-url {PYTORCH_INDEX}/{tag}" if tag else ""
            lines.append(f"pip install torch=={public_version(torch)}{index}")
    triton = pins.get("triton")
    if triton:
        if is_prerelease(triton):
            lines.append(f"# triton {triton}: a pre-release build, not installable from the registries")
        else:
            lines.append(f"pip install triton=={triton}   # after torch: torch's wheel pins its own Triton")
    hardware = [f"{_LABELS[k]} {pins[k]}" for k in ("driver", "gpu", "gpu_count") if pins.get(k)]
    if hardware:
        lines.append(f"# the node's, not pip's: {', '.join(hardware)}")
    return lines


def _release_of(version: str) -> str:
    return _PRERELEASE_RE.split(public_version(version))[0]


def cmd_env_for(path: str) -> int:
    """`speedrun env --for LOG_OR_RECORD_FOLDER`."""
    from harness.env import fingerprint
    from harness.extract import load_record_code

    code = load_record_code(path)
    if not code.pins:
        raise HarnessError(f"{code.log}: its header names no versions (no `Running ...` lines)")
    print(f"# environment of {code.log}")
    print("# " + ", ".join(f"{_LABELS[k]} {code.pins[k]}" for k in LOG_PIN_KEYS if k in code.pins))
    for line in install_spec(code.pins):
        print(line)
    diffs = pin_differences(code.pins, fingerprint())
    print("# this node: " + ("matches the log" if not diffs else "differs in " + "; ".join(diffs)))
    return 0


# ---------------------------------------------------------------------------------------------------------
# The pre-flight of record arms


@dataclass
class ArmFindings:
    arm: str
    differences: list[str] = field(default_factory=list)  # node vs the log's pins
    downloads: list[str] = field(default_factory=list)  # what the code fetches at run time, and where from
    stops: list[str] = field(default_factory=list)  # why it must not launch


def check_arms(arms, fp: dict | None = None) -> list[ArmFindings]:
    """Pins and downloads of every arm; sets each arm's `pin_differences`, `downloads` and, when everything it
    downloads is in the cache, the offline cache environment of its runs."""
    from harness import prefetch
    from harness.env import fingerprint

    fp = fp if fp is not None else fingerprint()
    out = []
    for arm in arms:
        f = ArmFindings(arm.name)
        if arm.pins:
            f.differences = pin_differences(arm.pins, fp)
            arm.pin_differences = list(f.differences)
            reason = torch_mismatch(arm.pins, fp)
            if reason:
                f.stops.append(reason)
        plan = prefetch.plan_for_script(arm.script, prefetch.data_root(arm.env))
        f.downloads = plan.lines()
        f.stops += plan.stops()
        arm.downloads = plan.records()
        if plan.needs and not plan.missing and not plan.bad:
            arm.env.update(plan.env)
        out.append(f)
    return out


def preflight(arms, *, run_anyway: bool = False, fp: dict | None = None, file=None) -> list[ArmFindings]:
    """Print what differs; raise HarnessError (before anything launches) when an arm must not run, unless
    run_anyway. Plain print: strings from a log are never rendered as markup."""
    file = file or sys.stderr
    findings = check_arms(arms, fp)
    for arm, f in zip(arms, findings):
        if not (f.differences or f.downloads):
            continue
        print(f"pre-flight, arm {arm.name} ({describe_code(arm.code)}):", file=file)
        if f.differences:
            print("  differs from the environment in its log:", file=file)
            for line in f.differences:
                print(f"    - {line}", file=file)
        if f.downloads:
            print("  downloads at run time:", file=file)
            for line in f.downloads:
                print(f"    - {line}", file=file)
    stops = [f"arm {f.arm}: {s}" for f in findings for s in f.stops]
    if stops and not run_anyway:
        raise HarnessError("pre-flight stopped before launching: " + "; ".join(stops)
                           + ". Pass --run-anyway to launch anyway")
    if stops:
        print("pre-flight: --run-anyway given, launching despite: " + "; ".join(stops), file=file)
    return findings


RECORD_KINDS = ("record-log", "record-folder")


def prepare_arms(arms, *, add_files: list[str] | None = None, run_anyway: bool = False, fp: dict | None = None,
                 file=None) -> list[ArmFindings]:
    """What every campaign command does between building its arms and launching: the pre-flight. When it
    stops, the code it extracted for this campaign is removed again (nothing ran; no half campaign is left)."""
    if add_files and not any(a.code.get("kind") in RECORD_KINDS for a in arms):
        raise HarnessError("--add-file places files beside code extracted from a record log or folder; "
                           "no arm runs such code")
    try:
        return preflight(arms, run_anyway=run_anyway, fp=fp, file=file)
    except HarnessError:
        from harness.extract import discard_code

        for a in arms:
            if a.code.get("kind") in RECORD_KINDS:
                discard_code(a.code)
        raise


def describe_code(code: dict) -> str:
    """One line: where an arm's code came from."""
    kind = code.get("kind")
    if kind == "track":
        return f"track {code.get('track')}"
    if kind == "script":
        return f"script {code.get('from')}"
    if kind in ("record-log", "record-folder"):
        what = "record log" if kind == "record-log" else "record folder"
        return f"{what} {code.get('from')}, code {str(code.get('source_sha256'))[:12]}"
    return "unknown origin"


def arms_markdown(campaign: dict) -> str:
    """record.md's section on each arm: where its code came from, its files' hashes, its pins, downloads."""
    lines = ["## Code of each arm", ""]
    for name, arm in (campaign.get("arms") or {}).items():
        code = arm.get("code") or {}
        lines.append(f"- **{name}**: {_md(describe_code(code))}; script sha256 `{arm.get('script_sha256')}`")
        if code.get("kind") in ("record-log", "record-folder"):
            lines.append(f"  - log `{_md(code.get('log'))}` (sha256 `{code.get('log_sha256')}`), embedded source "
                         f"sha256 `{code.get('source_sha256')}`" + (f"; {_md(code['note'])}" if code.get("note") else ""))
            for fname, digest in (code.get("files") or {}).items():
                lines.append(f"  - from the log: `{_md(fname)}` sha256 `{digest}`")
            for fname, extra in (code.get("extra_files") or {}).items():
                lines.append(f"  - **not from the log**: `{_md(fname)}` sha256 `{extra.get('sha256')}`, "
                             f"placed from `{_md(extra.get('from'))}`")
        pins = arm.get("pins") or {}
        if pins:
            lines.append("  - environment pins (its log): " + ", ".join(f"{_LABELS.get(k, k)} {_md(v)}"
                                                                          for k, v in pins.items()))
            diffs = arm.get("pin_differences") or []
            lines.append("  - this node: " + ("matches them" if not diffs else "differs in " + "; ".join(map(_md, diffs))))
        for d in arm.get("downloads") or []:
            lines.append(f"  - download: {_md(d.get('line', ''))}")
    return "\n".join(lines) + "\n"


def _md(text) -> str:
    """A string from a log or a path, safe inside markdown table-free text (no HTML, no backtick breaks)."""
    return str(text).replace("`", "'").replace("<", "&lt;").replace(">", "&gt;")
