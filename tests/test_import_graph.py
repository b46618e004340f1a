"""The harness's import floors (scripts/import_graph.py): no circle, no import that runs back up, imports inside
functions only where the CLI defers heavy ones on purpose. Read from the source with ast; nothing is run."""

import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import import_graph  # noqa: E402


def test_the_package_keeps_its_floors():
    assert import_graph.problems() == []


def test_every_command_module_is_on_the_commands_floor_and_the_engine_is_below_the_renderers():
    commands = import_graph.floor_of("harness.commands.run")
    assert import_graph.floor_of("harness.commands.verify") == commands
    assert import_graph.floor_of("harness.cli") < commands < import_graph.floor_of("harness.record_md")
    assert import_graph.floor_of("harness.record_md") < import_graph.floor_of("harness.campaign")
    assert import_graph.floor_of("harness.campaign") < import_graph.floor_of("harness.results")


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"harness/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_a_circle_an_upward_import_and_a_stray_function_import_are_each_named(tmp_path):
    root = _package(tmp_path, {
        "harness/results.py": "from harness import verdict\n",  # model -> model ...
        "harness/verdict.py": "from harness.results import x\n",  # ... and back: a circle
        "harness/campaign.py": "from harness.record_md import write_record\n",  # engine -> record: upward
        "harness/record_md.py": "def f():\n    import json\n",  # stdlib inside a function
        "harness/plots.py": "def f():\n    import matplotlib\n",  # heavy, but no comment why
        "harness/fsio.py": "def f():\n    import torch  # deferred: heavy\n",  # heavy, with its reason: fine
        "harness/newthing.py": "",  # on no floor
    })
    found = import_graph.problems(root)
    assert "circle: harness.results <-> harness.verdict" in found
    assert any(p.startswith("harness.campaign:1 imports harness.record_md") for p in found)
    assert any("record_md.py:2: imports json inside a function" in p for p in found)
    assert any("plots.py:2: defers matplotlib without a comment" in p for p in found)
    assert not any("fsio.py" in p for p in found)
    assert "harness.newthing: on no floor (give it one in scripts/import_graph.py FLOORS)" in found
    assert len(found) == 5


def test_the_cli_may_defer_the_commands(tmp_path):
    root = _package(tmp_path, {"harness/cli.py": "def main():\n    from harness.commands.run import cmd_run\n",
                               "harness/commands/__init__.py": "", "harness/commands/run.py": ""})
    assert import_graph.problems(root) == []
    deferred = [e for e in import_graph.imports(root) if e.in_function]
    assert [(e.source, e.target) for e in deferred] == [("harness.cli", "harness.commands.run")]
