"""The import graph of the `harness` package, read from the source with `ast` (nothing is imported or run),
held against the floors the package is built in.

    python scripts/import_graph.py          # the floors, each module's imports, and every problem found

Floors, top to bottom: a module may import modules of its own floor or of a floor below, never above, and
the graph has no circle. Imports inside a function are for the CLI's deferred imports only: in harness/cli.py
(the commands, imported when their command runs), and elsewhere of a heavy or optional third-party package
(torch, triton, scipy, matplotlib, ...), each with a comment saying why. tests/test_import_graph.py asserts
all of this over the real package.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "harness"
ROOT = Path(__file__).resolve().parent.parent

# Top to bottom; the first floor that names a module (or a `package.*` holding it) is its floor. A new module
# gets its place here (the test names a module that has none).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("entry: the program and its argument parsing", ("harness.__main__", "harness.cli")),
    ("commands: one module per command; they run the engine and write record.md", ("harness.commands.*",)),
    ("record: record.md and the plots, from a campaign's files", ("harness.record_md", "harness.plots")),
    ("engine: runs campaigns and processes, fetches, extracts, caches; imports no renderer", (
        "harness.campaign", "harness.preflight", "harness.record_preflight", "harness.extract",
        "harness.prefetch", "harness.compile_cache", "harness.data", "harness.autotune", "harness.lock",
        "harness.procs", "harness.clocks", "harness.telemetry", "harness.telemetry.sampler",
        "harness.telemetry.bench")),
    ("model: results, statistics, parsers and checks; no processes, no console", (
        "harness.results", "harness.verdict", "harness.stop_rules", "harness.comparison", "harness.step_times",
        "harness.scaling", "harness.plan", "harness.sequential", "harness.record_block", "harness.logs", "harness.verify",
        "harness.record_pins", "harness.fingerprint", "harness.tracks", "harness.rules",
        "harness.profiles", "harness.pooling", "harness.telemetry.*")),  # the telemetry package's readers and summaries (its sampler is the engine's)
    ("base: errors, atomic files and inert markdown text; the profiler hook, which runs inside a training process and imports no "
     "harness module", ("harness.errors", "harness.fsio", "harness.markdown", "harness", "harness.profile_hook",
                        "harness.profile_hook.sitecustomize")),
]

# What a function may import elsewhere than the CLI: slow or optional third-party packages.
DEFERRED_PACKAGES = ("torch", "triton", "numpy", "scipy", "matplotlib", "pynvml", "huggingface_hub", "rich")
DEFERRED_FILES = ("harness/cli.py",)  # the CLI defers every command's module


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a harness module, or a top-level third-party/stdlib name)
    line: int
    in_function: bool
    commented: bool  # a comment on the import's lines or on the line above it

    @property
    def internal(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(PACKAGE + ".")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path = ROOT) -> list[Import]:
    mods = modules(root)
    out = []
    for name, path in mods.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, filename=str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs or [base]  # `from harness import x`: the module x, not the package
            else:
                continue
            span = lines[node.lineno - 2 if node.lineno > 1 else 0: node.end_lineno]
            commented = any("#" in ln for ln in span)
            for target in targets:
                if target.startswith(PACKAGE + ".") or target == PACKAGE:
                    target = next((m for m in _prefixes(target) if m in mods), target)
                else:
                    target = target.split(".")[0]
                if target != name:
                    out.append(Import(name, target, node.lineno, id(node) in in_function, commented))
    return out


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:k]) for k in range(len(parts), 0, -1)]


def floor_of(module: str) -> int | None:
    """The floor's index (0 = top), or None for a module no floor names."""
    for k, (_, members) in enumerate(FLOORS):
        for m in members:
            if module == m or (m.endswith(".*") and (module == m[:-2] or module.startswith(m[:-1]))):
                return k
    return None


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems(root: Path = ROOT) -> list[str]:
    """Every way the package breaks its floors, one line each; [] when it keeps them."""
    mods = modules(root)
    edges = imports(root)
    internal = [e for e in edges if e.internal]
    out = [f"{m}: on no floor (give it one in scripts/import_graph.py FLOORS)" for m in mods if floor_of(m) is None]
    out += [f"circle: {' <-> '.join(c)}" for c in cycles(internal)]
    for e in internal:
        a, b = floor_of(e.source), floor_of(e.target)
        if a is not None and b is not None and b < a:
            out.append(f"{e.source}:{e.line} imports {e.target}, which is on a floor above it ({FLOORS[b][0]!r})")
    for e in edges:
        if not e.in_function:
            continue
        where = f"{mods[e.source].relative_to(root)}:{e.line}"
        if str(mods[e.source].relative_to(root)) in DEFERRED_FILES:
            continue
        if e.internal:
            out.append(f"{where}: imports {e.target} inside a function (only the CLI defers harness modules)")
        elif e.target not in DEFERRED_PACKAGES:
            out.append(f"{where}: imports {e.target} inside a function (not a heavy package: import it at the top)")
        elif not e.commented:
            out.append(f"{where}: defers {e.target} without a comment saying why")
    return out


def main() -> int:
    edges = [e for e in imports() if e.internal]
    by_source: dict[str, set[str]] = {}
    for e in edges:
        by_source.setdefault(e.source, set()).add(e.target)
    for k, (title, _) in enumerate(FLOORS):
        print(f"floor {len(FLOORS) - k}  {title}")
        for m in sorted(m for m in modules() if floor_of(m) == k):
            targets = sorted(t.removeprefix(PACKAGE + ".") for t in by_source.get(m, ()))
            print(f"    {m.removeprefix(PACKAGE + '.')}" + (f" -> {', '.join(targets)}" if targets else ""))
    found = problems()
    for p in found:
        print(f"problem: {p}")
    print(f"{len(modules())} modules, {len(edges)} imports between them, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
