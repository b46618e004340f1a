"""docs/DESIGN.md is the one home of the design facts the code cites: every citation names a section that
exists, no citation points at a DESIGN.md outside the repository, every docs/ file named exists, and the
telemetry columns table is the schema of harness/telemetry/columns.py."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO
from harness.telemetry.columns import ENERGY_COLUMNS, TELEMETRY_COLUMNS

DESIGN = REPO / "docs" / "DESIGN.md"
CITATION = re.compile(r'(\S*)DESIGN\.md,?\s*"([^"\n]+)"')


def _texts() -> dict[Path, str]:
    """The repository's own source and documentation (not results, not the virtualenv)."""
    files = [REPO / "README.md", *REPO.glob("docs/*.md")]
    for folder in ("harness", "tests", "tracks", "scripts", "nix"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".nix", ".toml", ".sh")]
    return {p: p.read_text(encoding="utf-8") for p in files if p.is_file() and p != Path(__file__)}


def _sections() -> set[str]:
    return {line[3:].strip() for line in DESIGN.read_text(encoding="utf-8").splitlines() if line.startswith("## ")}


def test_every_design_citation_names_a_section_of_docs_design_md():
    sections = _sections()
    cited = []
    for path, text in _texts().items():
        for m in CITATION.finditer(text):
            where = f"{path.relative_to(REPO)}: {m.group(0)!r}"
            assert m.group(1).endswith("docs/") or path == DESIGN, f"{where} does not point at docs/DESIGN.md"
            assert m.group(2) in sections, f"{where} names no section of docs/DESIGN.md"
            cited.append(m.group(2))
    assert len(cited) >= 8  # the citations this test exists for


def test_no_bare_design_md_mention():
    for path, text in _texts().items():
        for m in re.finditer(r"(\S*)DESIGN\.md", text):
            assert "docs/" in m.group(1) or path.parent.name == "docs", f"{path.relative_to(REPO)}: {m.group(0)!r}"


def test_every_docs_file_named_exists():
    for path, text in _texts().items():
        for name in re.findall(r"docs/([A-Za-z0-9_-]+\.md)", text):
            assert (REPO / "docs" / name).is_file(), f"{path.relative_to(REPO)} names docs/{name}, which is missing"


def test_the_telemetry_columns_table_is_the_schema():
    rows = []
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("telemetry.csv", "energy.csv"):
            rows.append((cells[0], cells[1].strip("`"), cells[2], cells[3] == "yes"))
    schema = [("telemetry.csv", c.name, c.unit, c.required) for c in TELEMETRY_COLUMNS]
    schema += [("energy.csv", c.name, c.unit, c.required) for c in ENERGY_COLUMNS]
    assert rows == schema
