"""The columns of the two CSVs the sampler writes: the one definition that the sampler (its header and the
order of its values), the reader (which columns a file must have), the columnar copy and the summary use.

A CSV is read by its header, so a file with an extra column or without an optional one still loads; a
file without a required column is refused (harness/telemetry/trace.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str  # the CSV header's name, and the key in Trace.cols / Trace.energy and in telemetry.npz
    unit: str  # "" for an index, a bitmask or a label
    type: type  # what the sampler writes (sampler._cell): int, float, or str (a label from `labels`)
    what: str
    # A file without a required column cannot be read at all (no time, no GPU, no reading); an optional
    # column left out reads as blank in every row, the same as a field NVML does not support.
    required: bool = False
    # how telemetry.npz stores the column: float32 for the NVML readings, float64 for unix seconds and for
    # the energy file (whose counter in mJ outgrows float32's 24-bit mantissa)
    stored: str = "float32"
    labels: tuple[str, ...] = ()  # for a str column: its values, stored as their index


TELEMETRY_COLUMNS: tuple[Column, ...] = (
    Column("t_unix", "s", float, "time of the sample (unix seconds, ms resolution)", required=True,
           stored="float64"),
    Column("gpu", "", int, "NVML index of the GPU", required=True),
    Column("sm_mhz", "MHz", int, "SM clock"),
    Column("mem_mhz", "MHz", int, "memory clock"),
    Column("power_w", "W", float, "power draw (NVML's ~1 s running average on H100)"),
    Column("temp_c", "°C", int, "GPU temperature"),
    Column("util_pct", "%", int, "GPU utilization over NVML's last sample period"),
    Column("mem_used_mib", "MiB", float, "device memory in use"),
    Column("reasons", "", int, "clock-event (throttle) reasons bitmask"),
)

ENERGY_COLUMNS: tuple[Column, ...] = (
    Column("t_unix", "s", float, "time of the reading (unix seconds)", required=True, stored="float64"),
    Column("gpu", "", int, "NVML index of the GPU", required=True, stored="float64"),
    Column("energy_mj", "mJ", int, "total energy counter since the driver loaded", required=True,
           stored="float64"),
    Column("kind", "", str, "when it was read: at the start, every second, at the end",
           stored="float64", labels=("start", "tick", "end")),
)

# The NVML readings of one tick: every telemetry column but the row's time and GPU.
SAMPLED_COLUMNS: tuple[Column, ...] = TELEMETRY_COLUMNS[2:]


def header(columns: tuple[Column, ...]) -> str:
    return ",".join(c.name for c in columns)


def names(columns: tuple[Column, ...]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


TELEMETRY_HEADER = header(TELEMETRY_COLUMNS)
ENERGY_HEADER = header(ENERGY_COLUMNS)
