"""A record's environment, from its log header: the pins of an arm whose code comes from a record log, where
this node differs from them, and the install spec that gives them (`speedrun env --for LOG`).

The header of a competition log names the software the record ran on (`Running Python 3.12.7 ...`,
`Running PyTorch 2.10.0.dev20251210+cu126 compiled for CUDA 12.6`, `Running Triton version 3.6.0`) and the
`nvidia-smi` block names the driver and the GPUs. Those become the pins of an arm whose code comes from the
log; the pre-flight (record_preflight.py) stops before launching when this node's PyTorch differs from them.
"""

from __future__ import annotations

import re

from harness.fingerprint import PIN_KEYS, version_matches

# The pins a log header gives, in the order they are printed.
LOG_PIN_KEYS = ("python", "torch", "cuda", "triton", "driver", "gpu", "gpu_count")
LABELS = {"python": "Python", "torch": "PyTorch", "cuda": "CUDA (PyTorch build)", "triton": "Triton",
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
        label = LABELS[key]
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
    hardware = [f"{LABELS[k]} {pins[k]}" for k in ("driver", "gpu", "gpu_count") if pins.get(k)]
    if hardware:
        lines.append(f"# the node's, not pip's: {', '.join(hardware)}")
    return lines


def _release_of(version: str) -> str:
    return _PRERELEASE_RE.split(public_version(version))[0]
