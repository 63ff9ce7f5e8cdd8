"""The command line as users and scripts call it: exact names, JSON lines, exit codes."""

import json
import os
import subprocess
import sys
import time
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
    assert lines[2]["gates_missed"][0] == f"match score {lines[2]['quality']:.3f} < 0.95"  # the test server transcribes nothing


def test_run_exits_zero_when_every_document_succeeds_and_strict_counts_a_missed_quality_gate(tmp_path, env):
    """The test server transcribes nothing, so the document is under the match-score gate: reported by
    default (as olmOCR and marker report and go on), exit 1 with --strict (as the daemon's blocking checks)."""
    pdf = tmp_path / "ok.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Aspirin 81 mg"], pages=1))
    result = medkg(["run", str(pdf), "--data-dir", str(tmp_path / "d")], env)
    strict = medkg(["run", str(pdf), "--strict", "--data-dir", str(tmp_path / "d")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "1/1 pages" in result.stdout and "UNDER A QUALITY GATE: match score" in result.stdout
    assert strict.returncode == 1 and "UNDER A QUALITY GATE" in strict.stdout


def test_run_takes_directories_globs_and_list_files_and_writes_one_md_and_json_per_source(tmp_path, env):
    folder = tmp_path / "labels"
    (folder / "2024").mkdir(parents=True)
    for path in (folder / "amoxicillin.pdf", folder / "2024" / "amoxicillin.pdf", tmp_path / "heparin.pdf", tmp_path / "insulin.pdf"):
        path.write_bytes(pdf_factory.text_pdf([f"{path.stem} {path.parent.name} 5 mg"], pages=1))
    (tmp_path / "more.txt").write_text(f"# a comment\n{tmp_path / 'insulin.pdf'}\n\n")
    out = tmp_path / "out"

    result = medkg(["run", str(folder), str(tmp_path / "hep*.pdf"), f"@{tmp_path / 'more.txt'}", "--output-dir", str(out),
                    "--json", "--data-dir", str(tmp_path / "d")], env)  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert sorted(line["source"] for line in lines) == ["amoxicillin.pdf", "amoxicillin.pdf", "heparin.pdf", "insulin.pdf"]
    assert sorted(path.name for path in out.iterdir()) == [
        "amoxicillin-1.json", "amoxicillin-1.md", "amoxicillin-2.json", "amoxicillin-2.md",
        "heparin.json", "heparin.md", "insulin.json", "insulin.md",
    ]  # fmt: skip
    heparin = next(line for line in lines if line["source"] == "heparin.pdf")
    assert json.loads((out / "heparin.json").read_text()) == json.loads(Path(heparin["output"].removeprefix("file://")).read_text())
    assert (out / "heparin.md").read_text().startswith("# Page")  # the test server's answer, as markdown


def test_run_options_choose_the_server_model_and_key_without_any_environment(tmp_path):
    pdf = tmp_path / "ok.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Aspirin 81 mg"], pages=1))
    secret = "sk-cli-canary-0123456789"
    with VllmDouble(model=MODEL, api_key=secret) as double:
        bare = {k: v for k, v in os.environ.items() if not k.startswith("MEDKG_")}
        env = dict(bare, DAGSTER_HOME="", SERVER_TOKEN=secret)
        args = ["run", str(pdf), "--server", double.url, "--model", MODEL, "--max-concurrency", "2", "--json", "--data-dir", str(tmp_path / "d")]

        refused = medkg(args, dict(bare, DAGSTER_HOME=""))  # no key: the server answers 401
        unset = medkg([*args, "--api-key-env", "NOT_SET_ANYWHERE"], env)
        served = medkg([*args, "--api-key-env", "SERVER_TOKEN"], env)

    assert refused.returncode == 1 and json.loads(refused.stdout)["status"] == "failed"
    assert unset.returncode != 0 and "NOT_SET_ANYWHERE" in unset.stderr and "not set" in unset.stderr
    assert served.returncode == 0, served.stdout + served.stderr
    assert json.loads(served.stdout)["pages_ok"] == 1
    for result in (refused, unset, served):
        assert secret not in result.stdout + result.stderr


def test_run_reads_every_pdf_under_an_s3_prefix(tmp_path, env, moto_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="labels")
    for key in ("fda/warfarin.pdf", "fda/sub/heparin.PDF", "fda/readme.txt", "other/insulin.pdf"):
        s3.put_object(Bucket="labels", Key=key, Body=pdf_factory.text_pdf([key], pages=1))

    aws = {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}  # moto's
    result = medkg(["run", "s3://labels/fda/", "--json", "--data-dir", str(tmp_path / "d")], dict(env, MEDKG_S3_ENDPOINT_URL=moto_server, **aws))

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(json.loads(line)["source"] for line in result.stdout.strip().splitlines()) == ["heparin.PDF", "warfarin.pdf"]


def test_on_a_terminal_a_progress_line_counts_documents_pages_and_failures(tmp_path, env):
    import fcntl
    import pty
    import struct
    import termios

    good, bad = tmp_path / "ok.pdf", tmp_path / "bad.pdf"
    good.write_bytes(pdf_factory.text_pdf(["Aspirin 81 mg"], pages=2))
    bad.write_bytes(b"not a pdf")
    controller, terminal = pty.openpty()  # stderr is a terminal of 24 x 120, stdout a pipe
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        result = subprocess.run([sys.executable, "-m", "medkg_pdf.cli", "run", str(good), str(bad), "--data-dir", str(tmp_path / "d")],
                                env=env, stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=240)  # fmt: skip
        os.close(terminal)
        shown = b""
        while chunk := _read_or_none(controller):
            shown += chunk
    finally:
        os.close(controller)

    progress = shown.decode(errors="replace")
    assert result.returncode == 1
    assert "2/2" in progress and "pages/s" in progress and "1 failed" in progress, progress
    assert "ok      ok.pdf" in result.stdout and "FAILED  bad.pdf" in result.stdout  # each document's line, above the bar


def _read_or_none(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536) or None
    except OSError:  # the terminal's other end is closed: all was read
        return None


def test_cache_gc_removes_only_cache_entries_older_than_asked_and_a_rerun_redoes_just_those(tmp_path, env):
    pdf = tmp_path / "label.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Heparin 5000 units"], pages=3))
    data = tmp_path / "d"
    assert medkg(["run", str(pdf), "--data-dir", str(data), "--json"], env).returncode == 0
    cache = sorted(path for path in (data / "cache").rglob("*") if path.is_file())
    old = [path for path in cache if "page-00002" in path.name]  # page 2's PNG and answer, last written 40 days ago
    assert len(old) == 2
    for path in old:
        os.utime(path, (time.time() - 40 * 86400,) * 2)

    dry = medkg(["cache", "gc", "--older-than", "30d", "--dry-run", "--data-dir", str(data)], env)
    assert dry.returncode == 0 and "would remove 2 cache entries" in dry.stdout and all(path.exists() for path in old)
    real = medkg(["cache", "gc", "--older-than", "30d", "--data-dir", str(data)], env)
    assert real.returncode == 0 and "removed 2 cache entries" in real.stdout and f"kept {len(cache) - 2}" in real.stdout
    assert not any(path.exists() for path in old) and (data / "documents").is_dir()
    assert medkg(["cache", "gc", "--older-than", "soon", "--data-dir", str(data)], env).returncode != 0

    again = json.loads(medkg(["run", str(pdf), "--data-dir", str(data), "--json"], env).stdout)
    assert again["status"] == "ok" and again["model_calls"] == 1  # only page 2 is asked again
    forced = json.loads(medkg(["run", str(pdf), "--force", "--data-dir", str(data), "--json"], env).stdout)
    assert forced["status"] == "ok" and forced["model_calls"] == 3  # --force: every page, stored answers ignored


def test_version_and_help_describe_every_option():
    version = medkg(["--version"], dict(os.environ))
    assert version.returncode == 0 and version.stdout.startswith("medkg-pdf ")
    commands = next(action for action in __import__("medkg_pdf.cli").cli.build_parser()._subparsers._group_actions).choices
    gc = next(action for action in commands["cache"]._subparsers._group_actions).choices["gc"]
    for name, parser in (*((command, commands[command]) for command in ("run", "demo", "serve-local")), ("cache gc", gc)):
        undocumented = [action.dest for action in parser._actions if not action.help]
        assert undocumented == [], f"{name}: {undocumented}"


def test_definitions_validate_with_dagster_cli(tmp_path):
    env = dict(os.environ, MEDKG_DATA_DIR=str(tmp_path), DAGSTER_HOME=str(tmp_path))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_dg_check_defs_loads_the_project_from_the_repository_root(tmp_path):
    env = dict(os.environ, MEDKG_DATA_DIR=str(tmp_path), DAGSTER_HOME=str(tmp_path))
    result = subprocess.run([str(Path(sys.executable).parent / "dg"), "check", "defs"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_definitions_have_the_whole_chain():
    from medkg_pdf.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"source_pdf", "page_images", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"} <= keys
    assert defs.resolve_assets_def("vlm_page_parses").op.pool == "vllm"
    assert defs.resolve_assets_def("page_images") is defs.resolve_assets_def("vlm_page_parses")  # one step: pages sent as rendered
    for key in ("source_pdf", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"):
        assert defs.resolve_assets_def(key).backfill_policy.max_partitions_per_run == 1  # one document per run


def test_pages_makes_a_document_of_those_pages_alone_with_its_own_id(tmp_path, env):
    """`--pages 2-3,5`: only those pages are drawn and sent; the result says which source pages it holds,
    and a later run of the whole PDF is another document (neither is ever taken for the other)."""
    import pymupdf

    pdf = tmp_path / "chart.pdf"
    pdf.write_bytes(pdf_factory.many_pages_pdf(6))
    data = tmp_path / "d"

    part = medkg(["run", str(pdf), "--pages", "2-3,5", "--json", "--data-dir", str(data)], env)
    whole = medkg(["run", str(pdf), "--json", "--data-dir", str(data)], env)

    assert part.returncode == 0 and whole.returncode == 0, part.stdout + part.stderr + whole.stderr
    part_line, whole_line = json.loads(part.stdout), json.loads(whole.stdout)
    assert part_line["document_id"].startswith("chart-pages-2-3-5-") and part_line["pages"] == 3
    assert part_line["source_pages"] == [2, 3, 5] and whole_line["source_pages"] is None
    assert whole_line["pages"] == 6 and whole_line["document_id"] != part_line["document_id"]
    document = json.loads(Path(part_line["output"].removeprefix("file://")).read_text())
    assert document["page_count"] == 3 and document["source_pages"] == [2, 3, 5]
    assert json.loads(Path(whole_line["output"].removeprefix("file://")).read_text())["source_pages"] is None
    [stored] = data.rglob(f"{part_line['document_id']}/source.pdf")
    with pymupdf.open(stored) as doc:
        assert [page.get_text().strip() for page in doc] == [f"Chart page {n} of 6" for n in (2, 3, 5)]


def test_pages_past_the_end_fail_that_document_saying_so_and_a_bad_range_is_refused(tmp_path, env):
    pdf = tmp_path / "short.pdf"
    pdf.write_bytes(pdf_factory.many_pages_pdf(3))

    past = medkg(["run", str(pdf), "--pages", "2-4,9", "--json", "--data-dir", str(tmp_path / "d")], env)
    bad = medkg(["run", str(pdf), "--pages", "5-2", "--data-dir", str(tmp_path / "d")], env)

    assert past.returncode == 1
    assert "pages 4,9 were asked for, but the PDF has 3 pages" in json.loads(past.stdout)["error"]
    assert bad.returncode == 2 and "--pages" in bad.stderr and "5-2" in bad.stderr


def test_demo_follows_the_same_conventions_json_lines_only_on_stdout(tmp_path, env):
    result = medkg(["demo", "--json", "--data-dir", str(tmp_path / "d")], env)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]  # every stdout line is a JSON object
    assert sorted(line["source"] for line in lines) == sorted(path.name for path in (tmp_path / "d" / "samples").iterdir())
    assert "generated sample PDFs" in result.stderr and "Quality report" in result.stderr
