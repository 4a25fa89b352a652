"""The import contract (.importlinter): every module has a layer, and a wrong-way import breaks it."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

PACKAGES = ("observer", "exporters", "alerts", "dashboards")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def layered_modules() -> set[str]:
    contract = configparser.ConfigParser()
    contract.read(REPO / ".importlinter")
    layers = contract["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in line.replace("|", ":").split(":")}


def top_level(package: str) -> set[str]:
    root = REPO / package
    return {
        f"{package}.{p.stem}"
        for p in root.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()
    }


def test_every_observer_module_has_a_layer() -> None:
    # A module missing from the layers contract would escape it: neither its imports nor its importers
    # would be checked.
    missing = top_level("observer") - layered_modules()
    assert not missing, f"add {sorted(missing)} to a layer in .importlinter"
    assert {"exporters", "alerts", "dashboards"} <= layered_modules()


def run_contract(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-logo", "--no-cache", "--config", str(tree / ".importlinter")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the four packages and the contract, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    text = module.read_text()
    module.write_text(
        text.replace(
            "from __future__ import annotations\n", f"from __future__ import annotations\n{statement}\n", 1
        )
    )


def test_the_repository_keeps_the_contract(tree: Path) -> None:
    result = run_contract(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        # core -> application
        ("observer/catalog.py", "import observer.cli", "Three layers"),
        # component -> application
        ("exporters/gpu/snapshot.py", "import observer.stack", "Three layers"),
        # component -> component not declared: the alert rules must not need the simulator
        ("alerts/engine.py", "import observer.simulator.scheduler", "otherwise independent"),
        # an allowed dependency taken the wrong way round
        ("observer/store/db.py", "import observer.collector.ingest", "observer serve"),
        # a cycle inside one package
        ("observer/simulator/scheduler.py", "import observer.simulator.engine", "No import cycles"),
    ],
)
def test_a_wrong_way_import_breaks_the_contract(
    tree: Path, module: str, statement: str, contract: str
) -> None:
    add_import(tree / module, statement)
    result = run_contract(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    assert statement.split()[-1].rsplit(".", 1)[-1] in broken, result.stdout  # the report names the import
