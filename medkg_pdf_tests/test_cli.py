"""The command line as users and scripts call it: exact names, JSON lines, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.vllm_double import VllmDouble

REPO = Path(__file__).resolve().parents[1]
MODEL = "medkg-embedded-ocr"


def medkg(args, env, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "medkg_pdf.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def env(tmp_path):
    with VllmDouble(model=MODEL) as double:
        yield dict(os.environ, MEDKG_VLLM_BASE_URL=double.url, MEDKG_VLLM_MODEL=MODEL, DAGSTER_HOME="")


def test_run_json_reports_each_document_and_a_bad_file_never_stops_the_others(tmp_path, env):
    good = tmp_path / "warfarin.pdf"
    good.write_bytes(pdf_factory.text_pdf(["Warfarin 5 mg daily, INR 2.0-3.0"], pages=2))
    bad = tmp_path / "scan.pdf"
    bad.write_bytes(pdf_factory.png_renamed())
    result = medkg(["run", str(bad), str(tmp_path / "missing.pdf"), str(good), "--json", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 1
    by_name = {Path(line["source"]).name: line for line in map(json.loads, result.stdout.strip().splitlines())}
    lines = [by_name["scan.pdf"], by_name["missing.pdf"], by_name["warfarin.pdf"]]  # printed as each finishes
    assert [line["status"] for line in lines] == ["failed", "failed", "ok"]
    for line in lines:
        assert {"document_id", "status", "pages", "pages_ok", "quality", "output", "error"} <= set(line)
    assert "PNG" in lines[0]["error"] and "no such file" in lines[1]["error"]
    assert lines[2]["pages"] == 2 and lines[2]["pages_ok"] == 2 and lines[2]["error"] is None
    assert Path(lines[2]["output"].removeprefix("file://")).is_file()
    assert isinstance(lines[2]["quality"], float)


def test_run_exits_zero_when_every_document_succeeds(tmp_path, env):
    pdf = tmp_path / "ok.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Aspirin 81 mg"], pages=1))
    result = medkg(["run", str(pdf), "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "1/1 pages" in result.stdout


def test_definitions_validate_with_dagster_cli(tmp_path):
    env = dict(os.environ, MEDKG_DATA_DIR=str(tmp_path), DAGSTER_HOME=str(tmp_path))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_definitions_have_the_whole_chain():
    from medkg_pdf.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"source_pdf", "page_images", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"} <= keys
    assert defs.resolve_assets_def("vlm_page_parses").op.pool == "vllm"
    assert defs.resolve_assets_def("page_images") is defs.resolve_assets_def("vlm_page_parses")  # one step: pages sent as rendered
    for key in ("source_pdf", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"):
        assert defs.resolve_assets_def(key).backfill_policy.max_partitions_per_run == 1  # one document per run
