"""The wheel ships the package alone: every file under medkg_pdf/, and no test or benchmark.

The wheel is built from a copy of the repository (tests and bench included, so leaving them out is
what is checked) with pip, as `pip install .` would build it. The build needs setuptools >= 77
(pyproject's `license = "Apache-2.0"`): the running interpreter's when it has one, else pip's
isolated build environment brings it from the configured index, as `make` does when it installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# not part of the source: environments, build output, caches, local data
LEFT_OUT = {".git", ".venv", "build", "dist", ".medkg-data", ".pytest_cache"}

pytestmark = pytest.mark.timeout(180)


def _setuptools_can_build() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def _source_copy(target: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO
        return {n for n in names if (top and n in LEFT_OUT) or n == "__pycache__" or n.endswith((".pyc", ".egg-info"))
                or (Path(directory) == REPO / "bench" and n == "out")}  # fmt: skip

    shutil.copytree(REPO, target, ignore=ignore)
    return target


def _package_files() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "medkg_pdf").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    source = _source_copy(tmp_path_factory.mktemp("source") / "medkg-pdf")
    out = tmp_path_factory.mktemp("wheel")
    isolation = ["--no-build-isolation"] if _setuptools_can_build() else []
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation, "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("medkg_pdf-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_every_package_file_and_nothing_else(wheel):
    names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == {"medkg_pdf"}, sorted(tops)
    assert not [name for name in names if name.startswith(("medkg_pdf_tests/", "bench/"))]
    shipped = {name for name in names if name.startswith("medkg_pdf/")}
    # every module and data file under medkg_pdf/, no more: a data file the package reads (yaml, json, fonts)
    # that the wheel misses needs package data in pyproject.toml
    assert shipped == _package_files(), sorted(shipped ^ _package_files())
    assert {"medkg_pdf/definitions.py", "medkg_pdf/cli.py", "medkg_pdf/defs/documents/__init__.py"} <= shipped


def test_the_wheel_declares_the_package_and_its_command(wheel):
    (dist_info,) = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" in name}
    assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["medkg_pdf"]
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "medkg-pdf = medkg_pdf.cli:main" in entry_points


def test_the_source_copy_holds_what_the_wheel_must_leave_out(tmp_path):
    """The check above means something only if the tests and bench were there to be left out."""
    source = _source_copy(tmp_path / "copy")
    assert (source / "medkg_pdf_tests" / "support" / "__init__.py").is_file()
    assert (source / "bench" / "__init__.py").is_file()
    assert not (source / ".git").exists() and not (source / ".venv").exists()


def test_a_plain_install_leaves_out_kubernetes_and_postgresql_which_the_package_never_imports():
    import ast

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    production_only = {"dagster-k8s", "dagster-postgres", "psycopg"}
    core = {re.split(r"[\[<>=!~ ]", requirement)[0] for requirement in project["dependencies"]}
    prod = {re.split(r"[\[<>=!~ ]", requirement)[0] for requirement in project["optional-dependencies"]["prod"]}
    assert not production_only & core and production_only <= prod
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for path in (REPO / "medkg_pdf").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.Import, ast.ImportFrom)) and (not isinstance(node, ast.ImportFrom) or node.module)
        for alias in node.names
    }
    assert not imported & {"dagster_k8s", "dagster_postgres", "psycopg", "psycopg2"}
