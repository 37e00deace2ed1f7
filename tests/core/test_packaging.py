"""A built wheel holds all five packages, the Hydra configs and every subpackage."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"ttc": "ttc", "strategies": "ttc.strategies", "verifiers": "ttc.verifiers",
           "engine": "ttc.engine", "evals": "ttc.evals"}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, dotted in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((dotted, *rel)))
    return found


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() <= listed, sorted(_packages_on_disk() - listed)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True,
                   timeout=300)
    (path,) = out.glob("ttc-*.whl")
    return path


def test_wheel_contains_all_packages_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for dotted in sorted(_packages_on_disk()):
        assert dotted.replace(".", "/") + "/__init__.py" in names, dotted
    assert "ttc/conf/config.yaml" in names
    assert "ttc/conf/strategy/best_of_n.yaml" in names
    assert "ttc/strategies/best_of_n.py" in names
    assert not any(n.startswith(("strategies/", "engine/", "tests/")) for n in names)
