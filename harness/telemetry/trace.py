"""A run's telemetry as arrays: the sampler's CSVs read by their header (or telemetry.npz, the columnar copy
that summarize_run writes next to them).

Columns are found by name (harness/telemetry/columns.py): an extra column is ignored, a missing optional one
reads as blank (NaN) in every row, and a file without a required column is refused with a HarnessError that
names the column and the file, never loaded as an empty trace.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.fsio import read_json_object, write_bytes_atomic
from harness.telemetry.columns import ENERGY_COLUMNS, TELEMETRY_COLUMNS, Column, header, names
from harness.telemetry.files import ENERGY_CSV, EXIT_JSON, META_JSON, NPZ, TELEMETRY_CSV

# A row without its time or its GPU index cannot be placed in a trace: it is skipped.
_PLACE = ("t_unix", "gpu")


@dataclass
class Trace:
    """All samples of one run, as float arrays (NaN where NVML gave nothing)."""

    cols: dict[str, np.ndarray]  # one array per TELEMETRY_COLUMNS name
    energy: dict[str, np.ndarray]  # one array per ENERGY_COLUMNS name (kind: 0 start, 1 tick, 2 end)
    meta: dict = field(default_factory=dict)
    exit: dict = field(default_factory=dict)

    @property
    def gpus(self) -> list[int]:
        found = set(int(g) for g in self.cols["gpu"]) | set(int(g) for g in self.energy["gpu"])
        return sorted(found | set(self.meta.get("gpus", [])))

    def gpu(self, index: int) -> dict[str, np.ndarray]:
        """The samples of one GPU, sorted by time."""
        sel = self.cols["gpu"] == index
        order = np.argsort(self.cols["t_unix"][sel], kind="stable")
        return {k: v[sel][order] for k, v in self.cols.items()}

    def gpu_energy(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self.energy["gpu"] == index
        t, e = self.energy["t_unix"][sel], self.energy["energy_mj"][sel]
        order = np.argsort(t, kind="stable")
        return t[order], e[order]

    @property
    def hz(self) -> float:
        if self.meta.get("hz"):
            return float(self.meta["hz"])
        t = np.unique(self.cols["t_unix"])
        return 1.0 / float(np.median(np.diff(t))) if len(t) > 2 else 10.0


def _value(column: Column, text: str) -> float:
    """One cell as a float: NaN when blank or unreadable; a label column as its label's index (-1: unknown)."""
    if column.labels:
        return float(column.labels.index(text)) if text in column.labels else -1.0
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        return math.nan


def _refuse_missing_required(path: Path, found: list[str], columns: tuple[Column, ...]) -> None:
    for c in columns:
        if c.required and c.name not in found:
            raise HarnessError(f"{path}: no column {c.name!r} ({c.what}) among {','.join(found)!r}; "
                               f"the sampler writes {header(columns)!r}")


def read_csv_columns(path: Path, columns: tuple[Column, ...]) -> dict[str, np.ndarray]:
    """A sampler CSV as one float array per column of `columns`, found by the file's header.

    A row of another width than the header (a torn last line: the sampler was killed mid-write) or without
    its time or GPU is skipped. An empty file (killed before its header) has no rows."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        head = [name.strip() for name in next(reader, [])]
        if head:
            _refuse_missing_required(path, head, columns)
            duplicated = sorted({n for n in head if head.count(n) > 1})
            if duplicated:
                raise HarnessError(f"{path}: column {duplicated[0]!r} appears twice in its header")
        picks = [(head.index(c.name) if c.name in head else None, c) for c in columns]  # None: not in the file
        place = [k for k, c in enumerate(columns) if c.name in _PLACE]
        rows = []
        for row in reader:
            if len(row) != len(head):
                continue
            values = [math.nan if i is None else _value(c, row[i]) for i, c in picks]
            if not any(math.isnan(values[k]) for k in place):
                rows.append(values)
    arr = np.array(rows, dtype=np.float64).reshape(-1, len(columns))
    return {c.name: arr[:, i] for i, c in enumerate(columns)}


def _from_npz(z, path: Path, columns: tuple[Column, ...], prefix: str) -> dict[str, np.ndarray]:
    found = [k[len(prefix):] for k in z.files if k.startswith(prefix)]
    _refuse_missing_required(path, found, columns)
    length = len(z[prefix + columns[0].name])
    return {c.name: z[prefix + c.name] if c.name in found else np.full(length, np.nan) for c in columns}


def load_trace(run_dir: Path) -> Trace | None:
    """The run's telemetry (CSV preferred, else the .npz written by an earlier summary); None if none.
    Raises HarnessError for a file without a required column."""
    run_dir = Path(run_dir)
    meta = read_json_object(run_dir / META_JSON)
    exit_info = read_json_object(run_dir / EXIT_JSON)
    tel_csv = run_dir / TELEMETRY_CSV
    if tel_csv.is_file():
        cols = read_csv_columns(tel_csv, TELEMETRY_COLUMNS)
        en_csv = run_dir / ENERGY_CSV
        if en_csv.is_file():
            energy = read_csv_columns(en_csv, ENERGY_COLUMNS)
        else:
            energy = {k: np.zeros(0) for k in names(ENERGY_COLUMNS)}
        return Trace(cols, energy, meta, exit_info)
    npz = run_dir / NPZ
    if npz.is_file():
        with np.load(npz) as z:
            cols = _from_npz(z, npz, TELEMETRY_COLUMNS, "")
            energy = _from_npz(z, npz, ENERGY_COLUMNS, "energy_")
        return Trace(cols, energy, meta, exit_info)
    return None


def write_npz(run_dir: Path, trace: Trace) -> Path:
    """telemetry.npz: the trace's columns (energy ones prefixed energy_), each as its column's `stored` type."""
    buf = io.BytesIO()
    arrays = {c.name: trace.cols[c.name].astype(c.stored) for c in TELEMETRY_COLUMNS}
    arrays.update({"energy_" + c.name: trace.energy[c.name].astype(c.stored) for c in ENERGY_COLUMNS})
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(Path(run_dir) / NPZ, buf.getvalue())
