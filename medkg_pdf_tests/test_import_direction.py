"""Who may import whom, read from the source with `ast` (every import statement, function bodies too).

* the package (`medkg_pdf`) imports neither the tests (`medkg_pdf_tests`) nor `bench`;
* the domain modules (plain logic at the package's top level) import nothing from Dagster and
  nothing from `medkg_pdf.defs`, directly or through the package modules they import;
* only `medkg_pdf/defs/`, `medkg_pdf/definitions.py` and `medkg_pdf/cli.py` import `medkg_pdf.defs`;
* tests import the package and `medkg_pdf_tests.support`, never `bench`; the support package
  imports no test module;
* `bench` imports the package (no private name of it) and, of the tests, `medkg_pdf_tests.support`
  alone; its modules do not import each other in a cycle.

Each rule is also run on a made-up module that breaks it, so none of them passes by finding nothing.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOMAIN = ("schemas", "storage_keys", "document_ids", "metrics", "quality_gates", "page_selection", "page_preview",
          "markdown_blocks", "profiles", "validation", "slo", "errors", "samples", "chat_contract", "model_client",
          "page_render", "report_plots", "exporters", "furniture")  # fmt: skip
MAY_IMPORT_DEFS = ("medkg_pdf.defs", "medkg_pdf.definitions", "medkg_pdf.cli")

Sources = dict[str, tuple[str, bool]]  # module name -> (source, is a package's __init__)


def sources(top: str) -> Sources:
    found: Sources = {}
    for path in sorted((REPO / top).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path.read_text(encoding="utf-8"), is_package)
    return found


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import in `source` may name: `from a.b import c` gives a.b and a.b.c (c may be a
    module); relative imports are resolved; `importlib.import_module("x")` with a literal counts too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def private_names(source: str, prefix: str) -> set[str]:
    """`from <prefix...> import _name`: private names taken from modules under `prefix`."""
    return {
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and not node.level and node.module and within(node.module, prefix)
        for alias in node.names
        if alias.name.startswith("_")
    }


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_dagster(name: str) -> bool:
    return within(name, "dagster") or name.startswith("dagster_")


def graph(modules: Sources) -> dict[str, set[str]]:
    return {name: imports(source, name, is_package) for name, (source, is_package) in modules.items()}


def reached(edges: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every module of `edges` it imports, directly or not, with the packages whose
    `__init__` an import runs on the way."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in edges]
        todo += [target for target in edges.get(name, ()) if target in edges]
    return seen


# -- the rules: each returns its violations as readable lines ----------------------------------


def package_imports_tests_or_bench(package: Sources) -> list[str]:
    return [f"{name} imports {target}" for name, targets in graph(package).items() for target in sorted(targets)
            if within(target, "medkg_pdf_tests", "bench")]  # fmt: skip


def domain_imports_dagster_or_defs(package: Sources) -> list[str]:
    edges = graph(package)
    bad = []
    for module in (f"medkg_pdf.{name}" for name in DOMAIN):
        if module not in edges:
            continue  # a domain module not (yet) in this tree
        for via in sorted(reached(edges, module)):
            bad += [f"{module} (through {via}) imports {target}" for target in sorted(edges[via])
                    if is_dagster(target) or within(target, "medkg_pdf.defs")]  # fmt: skip
    return bad


def outsiders_import_defs(package: Sources) -> list[str]:
    return [f"{name} imports {target}" for name, targets in graph(package).items() if not within(name, *MAY_IMPORT_DEFS)
            for target in sorted(targets) if within(target, "medkg_pdf.defs")]  # fmt: skip


def suite_imports_bench_or_support_imports_tests(tests: Sources) -> list[str]:
    bad = []
    for name, targets in graph(tests).items():
        bad += [f"{name} imports {target}" for target in sorted(targets) if within(target, "bench")]
        if within(name, "medkg_pdf_tests.support"):
            bad += [f"{name} imports {target}" for target in sorted(targets)
                    if within(target, "medkg_pdf_tests") and not within(target, "medkg_pdf_tests.support")]  # fmt: skip
    return bad


def bench_imports_tests_or_private_names(bench: Sources) -> list[str]:
    bad = []
    for name, (source, is_package) in bench.items():
        bad += [f"{name} imports {target}" for target in sorted(imports(source, name, is_package))
                if within(target, "medkg_pdf_tests") and not within(target, "medkg_pdf_tests.support")]  # fmt: skip
        bad += [f"{name} imports the private {target}" for target in sorted(private_names(source, "medkg_pdf"))]
    return bad


def bench_cycles(bench: Sources) -> list[str]:
    edges = {name: {target for target in targets if target in bench and target != name}
             for name, targets in graph(bench).items()}  # fmt: skip
    return sorted(f"{name} <-> {other}" for name in edges for other in edges[name]
                  if other != "bench" and name in reached(edges, other) and name < other)  # fmt: skip


RULES = (package_imports_tests_or_bench, domain_imports_dagster_or_defs, outsiders_import_defs)


# -- the tree as it is -------------------------------------------------------------------------


def test_the_scan_sees_the_whole_tree():
    package, tests, bench = sources("medkg_pdf"), sources("medkg_pdf_tests"), sources("bench")
    assert {"medkg_pdf.definitions", "medkg_pdf.cli", "medkg_pdf.defs.documents", "medkg_pdf.schemas"} <= set(package)
    assert {"medkg_pdf_tests.support.chain", "medkg_pdf_tests.test_import_direction"} <= set(tests)
    assert {"bench.common", "bench.overhead", "bench.slo", "bench.render"} <= set(bench)
    present = [name for name in DOMAIN if f"medkg_pdf.{name}" in package]
    assert len(present) >= 10, present  # the list names real modules
    definitions = imports(package["medkg_pdf.definitions"][0], "medkg_pdf.definitions")
    assert any(within(target, "medkg_pdf.defs") for target in definitions)  # the scan sees the imports it is meant to judge


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_package(rule):
    assert rule(sources("medkg_pdf")) == []


def test_the_tests():
    assert suite_imports_bench_or_support_imports_tests(sources("medkg_pdf_tests")) == []


def test_bench():
    bench = sources("bench")
    assert bench_imports_tests_or_private_names(bench) == []
    assert bench_cycles(bench) == []


def test_domain_modules_load_without_dagster():
    """At run time too: importing every domain module loads no Dagster and none of `medkg_pdf.defs`."""
    present = [f"medkg_pdf.{name}" for name in DOMAIN
               if (REPO / "medkg_pdf" / f"{name}.py").exists() or (REPO / "medkg_pdf" / name / "__init__.py").exists()]
    code = (f"import sys\nimport {', '.join(present)}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster' or m.startswith(('dagster_', 'medkg_pdf.defs'))))")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- each rule catches what it forbids ---------------------------------------------------------


def with_module(tree: Sources, name: str, source: str) -> Sources:
    return {**tree, name: (source, False)}


@pytest.mark.parametrize("source", [
    "from medkg_pdf_tests.support.pdf_factory import text_pdf\n",
    "def f():\n    import bench.common\n",
    "import importlib\nimportlib.import_module('medkg_pdf_tests.support.chain')\n",
])  # fmt: skip
def test_a_package_module_importing_tests_or_bench_is_caught(source):
    assert package_imports_tests_or_bench(with_module(sources("medkg_pdf"), "medkg_pdf.rendering", source))


@pytest.mark.parametrize("source", [
    "from dagster import asset\n",
    "import dagster_aws.s3\n",
    "from medkg_pdf.defs.partitions import documents\n",
    "from medkg_pdf import defs\n",
    "from .defs import documents\n",
    "from medkg_pdf.resources.vllm import VLLMResource\n",  # that module imports dagster: caught through it
])  # fmt: skip
def test_a_domain_module_importing_dagster_or_defs_is_caught(source):
    assert domain_imports_dagster_or_defs(with_module(sources("medkg_pdf"), "medkg_pdf.slo", source))


def test_a_new_domain_module_is_held_to_it_too():
    assert domain_imports_dagster_or_defs(with_module(sources("medkg_pdf"), "medkg_pdf.chat_contract", "import dagster\n"))


@pytest.mark.parametrize("source", ["from medkg_pdf.defs.partitions import documents\n", "from .defs import partitions\n"])
def test_a_module_outside_defs_importing_defs_is_caught(source):
    assert outsiders_import_defs(with_module(sources("medkg_pdf"), "medkg_pdf.sources", source))
    assert not outsiders_import_defs(with_module(sources("medkg_pdf"), "medkg_pdf.defs.ingest.sensors", source))


def test_a_test_importing_bench_or_support_importing_a_test_is_caught():
    tests = sources("medkg_pdf_tests")
    assert suite_imports_bench_or_support_imports_tests(with_module(tests, "medkg_pdf_tests.test_x", "from bench.simulator import Simulator\n"))
    assert suite_imports_bench_or_support_imports_tests(
        with_module(tests, "medkg_pdf_tests.support.chain", "from medkg_pdf_tests.test_assets import run_chain\n"))
    assert not suite_imports_bench_or_support_imports_tests(
        with_module(tests, "medkg_pdf_tests.test_x", "from medkg_pdf_tests.support.chain import register_files\n"))


@pytest.mark.parametrize("source", [
    "from medkg_pdf_tests.test_e2e_dagster import runs_tagged\n",
    "from medkg_pdf_tests.conftest import vllm_for\n",
    "def f():\n    from medkg_pdf.rendering import _context\n",
])  # fmt: skip
def test_bench_importing_a_test_module_or_a_private_name_is_caught(source):
    assert bench_imports_tests_or_private_names(with_module(sources("bench"), "bench.render", source))


def test_a_cycle_in_bench_is_caught():
    bench = sources("bench")
    cyclic = with_module(bench, "bench.code_location", bench["bench.code_location"][0] + "\nfrom bench.slo import SIM\n")
    assert bench_cycles(with_module(cyclic, "bench.slo", bench["bench.slo"][0])) == ["bench.code_location <-> bench.slo"]
