"""`medkg-pdf demo | run | serve-local`: the pipeline from a terminal, on a real Dagster instance."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the summary says what failed


def _data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("MEDKG_DATA_DIR") or ".medkg-data").resolve()


def threaded_instance(home: str, workers: int):
    """A Dagster instance on `home` for runs executed in threads of one process.

    Per-step stdout/stderr capture redirects the process's file descriptors, so it is off; the
    `vllm` pool admits every worker (the caller bounds the pages in flight); and the instance's
    python_logs handlers are resolved once: Dagster re-applies them with logging.config.dictConfig
    at the start of every run, which deadlocks against the event-log handlers' locks when runs
    start in several threads at once.
    """
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    overrides = {
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"},
        "concurrency": {"pools": {"default_limit": max(workers, 2)}},
    }
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=overrides))
    yaml_handlers = list(instance.get_yaml_python_handlers())
    instance.get_yaml_python_handlers = lambda: yaml_handlers
    return instance


def _instance(data_dir: Path, *, workers: int = 1):
    """A persistent instance under the data dir (unless DAGSTER_HOME is set), so `dagster dev` shows the runs."""
    if not os.environ.get("DAGSTER_HOME"):
        home = data_dir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")  # `make ui` replaces it with the repo's dagster.yaml
        os.environ["DAGSTER_HOME"] = str(home)
    return threaded_instance(os.environ["DAGSTER_HOME"], workers)


def _document_summary(storage, document_id: str, run_ok: bool, run_error: str | None) -> dict[str, Any]:
    from medkg_pdf import storage_keys
    from medkg_pdf.schemas import QuarantineRecord
    from medkg_pdf.schemas import DocumentQuality, PageParses, SourceRef

    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    parses = storage.read_model_or_none(storage_keys.page_parses(document_id), PageParses)
    quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
    quarantined = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    ok = run_ok and quarantined is None and quality is not None
    return {
        "document_id": document_id,
        "source": ref.name if ref else None,
        "status": "ok" if ok else "failed",
        "pages": len(parses.pages) if parses else None,
        "pages_ok": sum(p.status.usable for p in parses.pages) if parses else 0,
        "model_calls": parses.model_calls if parses else 0,
        "quality": quality.match_score if quality else None,
        "numeric_recall": quality.numeric_recall if quality else None,
        "output": storage.uri(storage_keys.structured_json(document_id)) if ok else None,
        "error": None if ok else (quarantined.message if quarantined else run_error or "run failed"),
    }


def _run_error(instance, run_id: str) -> str | None:
    from dagster import DagsterEventType

    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data and data.error:
            return data.error.message.strip().splitlines()[0][:500]
    return None


CLI_PID_TAG = "medkg/cli_pid"


def fail_orphaned_runs(instance, storage) -> list[str]:
    """Runs a killed `medkg-pdf` process left "started" (in-process runs have no run monitor) are
    marked failed, and their documents quarantined with why, so nothing stays in progress for ever."""
    from dagster import DagsterRunStatus, RunsFilter

    from medkg_pdf.defs.document_steps import DocumentError, quarantine

    orphaned = []
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING], tags={"medkg/trigger": "cli"}))
    for run in runs:
        pid = int(run.tags.get(CLI_PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and _alive(pid):
            continue
        message = (
            f"the medkg-pdf process running it (pid {pid or 'unknown'}) died before the run ended: killed, "
            "for example for memory (see `dmesg` for the OOM killer); pages stored before are reused by the next run"
        )
        instance.report_run_failed(run, message=message)
        document_id = run.tags.get("dagster/partition")
        if document_id:
            quarantine(storage, document_id, "run", DocumentError(message, retryable=True, reason="process_died"), run_id=run.run_id)
        orphaned.append(run.run_id)
    return orphaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pdf_paths(args: list[str]) -> list[Path]:
    """Files as given; a directory stands for the PDFs inside it (recursively), in name order."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf"))
        else:
            paths.append(path)
    return paths


def process_files(
    files: list[Path],
    data_dir: Path,
    *,
    json_lines: bool,
    workers: int = 4,
    pages_in_flight: int | None = None,
    render_processes: int | None = None,
) -> list[dict[str, Any]]:
    """Register each file as a `documents` partition and materialize the chain: one run per document.

    `workers` documents run at once (each its own Dagster run, in its own thread of this process),
    and `pages_in_flight` pages are on the model server across them (an equal share per run), so
    one document's start-up, rendering and tail are covered by the pages of the others.
    """
    from concurrent.futures import ThreadPoolExecutor

    from dagster import Definitions

    from medkg_pdf.defs.documents import document_assets
    from medkg_pdf.defs.documents.jobs import document_chain_job
    from medkg_pdf.engine.process import EmbeddedEngine
    from medkg_pdf.defs.partitions import documents
    from medkg_pdf.resources import resources_for
    from medkg_pdf.chat_contract import EMBEDDED_MODEL
    from medkg_pdf.sources import file_ref, register

    environ = dict(os.environ, MEDKG_DATA_DIR=str(data_dir))
    instance = _instance(data_dir, workers=workers)
    workers = max(1, min(workers, len(files) or 1))
    results = []
    with ExitStack() as stack:
        if not environ.get("MEDKG_VLLM_BASE_URL"):
            # one engine for every run of this command, instead of one per run
            engine = stack.enter_context(EmbeddedEngine(model_name=EMBEDDED_MODEL, api_key=environ.get("MEDKG_VLLM_API_KEY")))
            environ.update(MEDKG_VLLM_BASE_URL=engine.url, MEDKG_VLLM_MODEL=EMBEDDED_MODEL)
        if pages_in_flight:
            environ["MEDKG_VLLM_MAX_CONCURRENCY"] = str(max(1, -(-pages_in_flight // workers)))
        resources = resources_for(environ)
        storage = resources["storage"]
        fail_orphaned_runs(instance, storage)
        run_config: dict[str, Any] = dict(QUIET_LOGS)
        if render_processes is not None:
            run_config["ops"] = {"page_images_and_parses": {"config": {"workers": render_processes}}}
        # resolved once for every run (what `materialize` would redo per document), under the job the daemon runs too
        chain = Definitions(jobs=[document_chain_job], assets=document_assets, resources=resources).resolve_job_def(document_chain_job.name)

        def one(path: Path) -> dict[str, Any]:
            started = time.perf_counter()
            if not path.is_file():
                result = {"document_id": None, "source": str(path), "status": "failed", "pages": None, "pages_ok": 0,
                          "quality": None, "output": None, "error": f"{path}: no such file"}  # fmt: skip
            else:
                ref = file_ref(path)
                register(storage, ref)
                instance.add_dynamic_partitions(documents.name, [ref.document_id])
                outcome = chain.execute_in_process(
                    partition_key=ref.document_id,
                    instance=instance,
                    run_config=run_config,
                    raise_on_error=False,
                    tags={"medkg/trigger": "cli", CLI_PID_TAG: str(os.getpid())},
                )
                error = None if outcome.success else _run_error(instance, outcome.run_id)
                result = _document_summary(storage, ref.document_id, outcome.success, error)
                result["run_id"] = outcome.run_id
            result["seconds"] = round(time.perf_counter() - started, 2)
            if json_lines:
                print(json.dumps(result), flush=True)
            else:
                _print_result(result)
            return result

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medkg-document") as pool:
            results = list(pool.map(one, files))
    return results


def _print_result(result: dict[str, Any]) -> None:
    if result["status"] == "ok":
        quality = "no baseline (scanned)" if result["quality"] is None else f"{result['quality']:.3f}"
        print(
            f"  ok      {result['source']}: {result['pages_ok']}/{result['pages']} pages, "
            f"match vs text layer {quality}, {result['seconds']:.1f} s\n          -> {result['output']}",
            flush=True,
        )
    else:
        error = result["error"] or ""
        error = error.removeprefix(f"{result['source']}: ")
        print(f"  FAILED  {result['source']}: {error}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args.data_dir)
    results = process_files(
        pdf_paths(args.files),
        data_dir,
        json_lines=args.json,
        workers=args.workers,
        pages_in_flight=args.pages_in_flight,
        render_processes=args.render_processes,
    )
    return 0 if all(r["status"] == "ok" for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from medkg_pdf.samples import write_samples

    data_dir = _data_dir(args.data_dir)
    started = time.perf_counter()
    paths = write_samples(data_dir / "samples")
    print(f"medkg-pdf demo: {len(paths)} generated sample PDFs in {data_dir / 'samples'}", flush=True)
    results = process_files(paths, data_dir, json_lines=False)
    ok = sum(r["status"] == "ok" for r in results)
    pages = sum(r["pages"] or 0 for r in results)
    print(
        f"\n{ok}/{len(results)} documents ok, {pages} pages, {time.perf_counter() - started:.1f} s in all.\n"
        f"Outputs: {data_dir / 'documents'}\n"
        f"Open the Dagster UI on these runs:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
        f"MEDKG_DATA_DIR={data_dir} .venv/bin/dagster dev   (or: make ui)"
    )
    return 0 if ok == len(results) else 1


def cmd_serve_local(args: argparse.Namespace) -> int:
    from medkg_pdf.engine.server import main as serve_main

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.max_concurrency:
        argv += ["--max-concurrency", str(args.max_concurrency)]
    serve_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medkg-pdf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate sample medical PDFs and run the whole chain on them")
    demo.add_argument("--data-dir", help="where outputs go (default: $MEDKG_DATA_DIR or ./.medkg-data)")
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser("run", help="run the whole chain on your own PDFs")
    run.add_argument("files", nargs="+", metavar="PDF_OR_DIR", help="PDF files, or directories of them")
    run.add_argument("--data-dir", help="where outputs go (default: $MEDKG_DATA_DIR or ./.medkg-data)")
    run.add_argument("--workers", type=int, default=4, help="documents processed at once, each its own Dagster run (default 4)")
    run.add_argument(
        "--pages-in-flight",
        type=int,
        help="pages on the model server at once across all workers (default: workers x $MEDKG_VLLM_MAX_CONCURRENCY, 8 each)",
    )
    run.add_argument(
        "--render-processes",
        type=int,
        metavar="N",
        help="processes rendering a document of 64+ pages (default: one per core, the helpers shared by all "
        "workers); 1 renders in the document's own thread: ~100 MB less, slower with long documents",
    )
    run.add_argument("--json", action="store_true", help="one JSON object per document on stdout")
    run.set_defaults(func=cmd_run)
    serve = sub.add_parser("serve-local", help="serve the embedded OCR engine on the OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-concurrency", type=int)
    serve.set_defaults(func=cmd_serve_local)
    return parser


def fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads their own malloc arenas (up to 8 per core) and memory freed in one is not
    reused by another: with `--workers 8` (a dozen threads per document) that kept ~65 MB more at the
    peak (bench/memory_cli.py). Two arenas, as MALLOC_ARENA_MAX=2 gives, unless the environment says
    otherwise; the variable is set too, for the render helper processes."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-8, arenas)  # M_ARENA_MAX, glibc's malloc.h
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> int:
    fewer_malloc_arenas()  # before any thread exists
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from dagster import BetaWarning, PreviewWarning

        warnings.filterwarnings("ignore", category=BetaWarning)
        warnings.filterwarnings("ignore", category=PreviewWarning)
    except ImportError:  # pragma: no cover
        pass
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
