"""The node's fingerprint and the track's pins: what machine and software a campaign ran on, and whether that
is the track's record environment ("record-grade"). (Environment variables of runs are campaign.py's.)

`speedrun env` prints the fingerprint; `speedrun env --check TRACK` lists what differs from the track's pins
and exits 1 unless the environment is record-grade. Without an NVIDIA driver the GPU part says so in one
line and everything else still works (the tiny track runs on CPU).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path



def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_fingerprint() -> dict:
    """GPUs and driver as NVML reports them; {"available": False, "reason": ...} without a driver."""
    try:
        import pynvml as n  # deferred: optional (no NVIDIA driver on CPU nodes)
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py (pynvml) is not installed"}
    try:
        n.nvmlInit()
    except Exception as e:
        return {"available": False, "reason": f"no NVIDIA driver ({e})"}

    def get(name: str, *a):
        """Call NVML function `name`; None when it fails or this nvidia-ml-py lacks it (older releases)."""
        try:
            return _s(getattr(n, name)(*a))
        except Exception:
            return None

    try:
        cuda_v = get("nvmlSystemGetCudaDriverVersion")
        out = {
            "available": True,
            "driver": get("nvmlSystemGetDriverVersion"),
            "cuda_driver": f"{cuda_v // 1000}.{cuda_v % 1000 // 10}" if isinstance(cuda_v, int) else None,
            "nvml": get("nvmlSystemGetNVMLVersion"),
            "count": get("nvmlDeviceGetCount") or 0,
            "gpus": [],
        }
        for i in range(out["count"]):
            h = get("nvmlDeviceGetHandleByIndex", i)
            limit = get("nvmlDeviceGetEnforcedPowerLimit", h)
            ecc = get("nvmlDeviceGetEccMode", h)
            pm = get("nvmlDeviceGetPersistenceMode", h)
            mem = get("nvmlDeviceGetMemoryInfo", h)
            pci = get("nvmlDeviceGetPciInfo", h)
            out["gpus"].append({
                "index": i,
                "name": get("nvmlDeviceGetName", h),
                "uuid": get("nvmlDeviceGetUUID", h),
                "vbios": get("nvmlDeviceGetVbiosVersion", h),
                "persistence_mode": None if pm is None else bool(pm),
                "power_limit_w": None if limit is None else limit / 1000.0,
                "ecc": None if ecc is None else bool(ecc[0]),
                "max_sm_mhz": get("nvmlDeviceGetMaxClockInfo", h, getattr(n, "NVML_CLOCK_SM", 1)),
                "memory_mib": None if mem is None else mem.total // 2**20,
                "pci_bus_id": None if pci is None else _s(pci.busId),
            })
        out["model"] = _common([g["name"] for g in out["gpus"]])
        return out
    finally:
        try:
            n.nvmlShutdown()
        except Exception:
            pass


def _common(names: list) -> str | None:
    uniq = sorted({x for x in names if x})
    return uniq[0] if len(uniq) == 1 else (" + ".join(uniq) if uniq else None)


def software_fingerprint() -> dict:
    out: dict = {"python": platform.python_version(), "kernel": platform.release(), "os": platform.platform(),
                 "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        import torch  # deferred: heavy and optional

        out["torch"] = torch.__version__
        out["cuda_runtime"] = torch.version.cuda  # the CUDA the torch build was compiled for
        out["cuda_available"] = torch.cuda.is_available() if torch.version.cuda else False
        try:
            nccl = torch.cuda.nccl.version() if torch.version.cuda else None
            out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else (str(nccl) if nccl else None)
        except Exception:
            out["nccl"] = None
    except ImportError:
        out["torch"] = None
    try:
        import triton  # deferred: heavy and optional

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def fingerprint() -> dict:
    """The environment a campaign records in campaign.json (see docs/DESIGN.md "Environment fingerprint")."""
    return {"nvidia": nvidia_fingerprint(), "software": software_fingerprint()}


# Pin keys a track.toml may use, and where each is found in the fingerprint.
PIN_KEYS = {
    "driver": lambda fp: fp["nvidia"].get("driver"),
    "cuda_driver": lambda fp: fp["nvidia"].get("cuda_driver"),
    "cuda": lambda fp: fp["software"].get("cuda_runtime"),
    "torch": lambda fp: fp["software"].get("torch"),
    "triton": lambda fp: fp["software"].get("triton"),
    "nccl": lambda fp: fp["software"].get("nccl"),
    "python": lambda fp: fp["software"].get("python"),
    "gpu": lambda fp: fp["nvidia"].get("model"),
    "gpu_count": lambda fp: fp["nvidia"].get("count"),
}


def version_matches(actual: str, pinned: str) -> bool:
    """Versions match exactly, except that a local build tag after "+" is ignored: a pin "2.11.0" matches
    "2.11.0+cu130" (the tag is the CUDA build, pinned separately as `cuda`), but not "2.11.1"."""
    a, p = str(actual).strip(), str(pinned).strip()
    return a == p or a.split("+", 1)[0] == p


def check_pins(track, fp: dict) -> list[str]:
    """Every way this environment differs from the track's record environment (empty: record-grade)."""
    bad: list[str] = []
    nvidia = fp.get("nvidia") or {}
    for key, pinned in sorted(track.pins.items()):
        if key not in PIN_KEYS:
            bad.append(f"{key}: unknown pin in track.toml (known: {', '.join(PIN_KEYS)})")
            continue
        if key in ("driver", "cuda_driver", "gpu", "gpu_count") and not nvidia.get("available"):
            bad.append(f"{key}: none (no NVIDIA GPU visible) != pinned {pinned}")
            continue
        actual = PIN_KEYS[key](fp)
        if actual is None:
            bad.append(f"{key}: unknown != pinned {pinned}")
        elif key == "gpu":
            # Every GPU must be the pinned model (a mixed node is not the record hardware).
            names = [g.get("name") or "" for g in nvidia.get("gpus", [])]
            if not names or any(pinned.lower() not in nm.lower() for nm in names):
                bad.append(f"gpu: {actual} != pinned {pinned}")
        elif key == "gpu_count":
            if int(actual) < int(pinned):
                bad.append(f"gpu_count: {actual} < pinned {pinned}")
        elif not version_matches(actual, pinned):
            bad.append(f"{key}: {actual} != pinned {pinned}")
    if track.uses_gpu and nvidia.get("available") and nvidia.get("count", 0) < track.nproc:
        bad.append(f"gpu_count: {nvidia.get('count')} < the track's nproc {track.nproc}")
    bad.extend(f"frozen file {m}" for m in track.frozen_mismatches())
    return bad


def campaign_env(track, fp: dict | None = None) -> dict:
    """What campaign.json stores: the fingerprint, the pins, the mismatches and the verdict."""
    fp = fp if fp is not None else fingerprint()
    mismatches = check_pins(track, fp)
    return {"fingerprint": fp, "pins": dict(track.pins), "mismatches": mismatches, "record_grade": not mismatches}


def env_markdown(env: dict) -> str:
    """The record.md environment section, from campaign_env()'s dict."""
    fp = env["fingerprint"]
    lines = ["## Environment", ""]
    if env["record_grade"]:
        lines.append("**Record-grade**: this environment matches the track's pins and frozen files.")
    else:
        lines.append("**Not record-grade**; differs from the track's record environment in:")
        lines.append("")
        lines.extend(f"- {m}" for m in env["mismatches"])
    lines += ["", fingerprint_markdown(fp)]
    return "\n".join(lines)


def fingerprint_markdown(fp: dict) -> str:
    """The fingerprint as a markdown table (record.md)."""
    lines = ["| what | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in fingerprint_rows(fp)]
    return "\n".join(lines) + "\n"


def fingerprint_rows(fp: dict) -> list[tuple[str, str]]:
    """(label, value) rows for a table: the node-wide facts, then one row per GPU."""
    nv, sw = fp.get("nvidia") or {}, fp.get("software") or {}
    rows: list[tuple[str, str]] = []
    if nv.get("available"):
        gpus = nv.get("gpus", [])
        rows += [
            ("GPU", f"{nv.get('count')} × {nv.get('model')}"),
            ("driver", str(nv.get("driver"))),
            ("CUDA driver", str(nv.get("cuda_driver"))),
            ("persistence mode", _uniq(["on" if g.get("persistence_mode") else "off" for g in gpus])),
            ("power limit", _uniq([f"{g['power_limit_w']:.0f} W" if g.get("power_limit_w") else "?" for g in gpus])),
            ("ECC", _uniq(["on" if g.get("ecc") else ("off" if g.get("ecc") is False else "?") for g in gpus])),
            ("VBIOS", _uniq([str(g.get("vbios")) for g in gpus])),
        ]
        rows += [(f"GPU {g['index']}", f"{g.get('uuid')} ({g.get('pci_bus_id')})") for g in gpus]
    else:
        rows.append(("GPU", f"none: {nv.get('reason', 'unknown')}"))
    rows += [
        ("PyTorch", str(sw.get("torch"))),
        ("CUDA runtime (torch)", str(sw.get("cuda_runtime"))),
        ("Triton", str(sw.get("triton"))),
        ("NCCL", str(sw.get("nccl"))),
        ("Python", str(sw.get("python"))),
        ("kernel", str(sw.get("kernel"))),
        ("CPU", f"{sw.get('cpu')} ({sw.get('cpu_count')} logical)"),
    ]
    return rows


def _uniq(vals: list[str]) -> str:
    u = sorted(set(vals))
    return u[0] if len(u) == 1 else ", ".join(vals)
