"""`medkg-pdf demo | run | cache gc | serve-local`: the pipeline from a terminal, on a real Dagster instance."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import glob
import json
import os
import sys
import threading
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from medkg_pdf.schemas import SourceRef



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


def _document_summary(storage, document_id: str, run_ok: bool, run_error: str | None, targets=None) -> dict[str, Any]:
    from medkg_pdf import storage_keys
    from medkg_pdf.quality_gates import gates_missed
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
        "source_pages": ref.pages if ref else None,  # --pages: which pages of the source these are
        "pages_ok": sum(p.status.usable for p in parses.pages) if parses else 0,
        "model_calls": parses.model_calls if parses else 0,
        "quality": quality.match_score if quality else None,
        "numeric_recall": quality.numeric_recall if quality else None,
        "output": storage.uri(storage_keys.structured_json(document_id)) if ok else None,
        "error": None if ok else (quarantined.message if quarantined else run_error or "run failed"),
        # the blocking gates the daemon's runs enforce; here they are reported (the SLO report counts them as errors)
        "gates_missed": gates_missed(quality, targets) if ok and targets is not None else [],
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

    from medkg_pdf.defs.documents.sensors import fail_dead_run
    from medkg_pdf.engine.process import process_alive

    orphaned = []
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING], tags={"medkg/trigger": "cli"}))
    for run in runs:
        pid = int(run.tags.get(CLI_PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and process_alive(pid):
            continue
        fail_dead_run(instance, storage, run, pid or None)
        orphaned.append(run.run_id)
    return orphaned


GLOB_CHARS = set("*?[")


def pdf_paths(args: list[str]) -> list[Path]:
    """Local inputs as users give them to olmOCR or marker: files, directories (their PDFs,
    recursively), globs (`**` recursive) and `@list.txt` (one input per line); in name order per input."""
    paths: list[Path] = []
    for arg in args:
        if arg.startswith("@"):
            lines = Path(arg[1:]).read_text(encoding="utf-8").splitlines()
            paths.extend(pdf_paths([line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]))
            continue
        path = Path(arg)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf"))
        elif not path.exists() and GLOB_CHARS & set(arg):
            matches = sorted(Path(match) for match in glob.glob(arg, recursive=True))
            paths.extend(matches or [path])  # no match: reported as missing, like a misspelt file
        else:
            paths.append(path)
    return paths


def s3_inputs(uri: str, s3_client, pages: tuple[int, ...] | None = None) -> list[SourceRef]:
    """`s3://bucket/prefix`: every `.pdf` object under the prefix, registered as the sensor would."""
    from medkg_pdf.sources import s3_ref

    parsed = urlparse(uri)
    refs = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/")):
        for item in page.get("Contents", []):
            if item["Key"].lower().endswith(".pdf"):
                refs.append(s3_ref(parsed.netloc, item["Key"], etag=item.get("ETag", "").strip('"') or None, pages=pages))
    return refs


def output_names(names: list[str]) -> list[str]:
    """One output file stem per input, after its source; a stem shared by two inputs gets a number."""
    stems = [Path(name).stem or "document" for name in names]
    seen: dict[str, int] = {}
    unique = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        unique.append(stem if stems.count(stem) == 1 else f"{stem}-{seen[stem]}")
    return unique


def process_files(
    files: list[Path | str],
    data_dir: Path,
    *,
    json_lines: bool,
    workers: int = 4,
    pages_in_flight: int | None = None,
    render_processes: int | None = None,
    settings: dict[str, str] | None = None,
    output_dir: Path | None = None,
    formats: tuple[str, ...] = ("md", "json"),
    progress: bool = False,
    log_level: str = "CRITICAL",
    force: bool = False,
    pages: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Register each file as a `documents` partition and materialize the chain: one run per document.

    `workers` documents run at once (each its own Dagster run, in its own thread of this process),
    and `pages_in_flight` pages are on the model server across them (an equal share per run), so
    one document's start-up, rendering and tail are covered by the pages of the others.
    `files` are local paths or `s3://bucket/prefix` strings; `settings` override the environment's
    MEDKG_* settings for this command (model server, model, profile, key). `pages` (1-based) makes each
    input the document of those pages alone (its own id, see `medkg_pdf.page_selection`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from dagster import Definitions

    from medkg_pdf.defs.documents import document_assets
    from medkg_pdf.defs.documents.jobs import document_chain_job
    from medkg_pdf.engine.process import EmbeddedEngine
    from medkg_pdf.defs.partitions import documents
    from medkg_pdf.resources import resources_for
    from medkg_pdf.chat_contract import EMBEDDED_MODEL
    from medkg_pdf.schemas import SourceRef
    from medkg_pdf.sources import file_ref, register

    environ = dict(os.environ, MEDKG_DATA_DIR=str(data_dir), **(settings or {}))
    instance = _instance(data_dir, workers=workers)
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
        inputs: list[Path | SourceRef] = []
        for item in files:
            if isinstance(item, str) and item.startswith("s3://"):
                inputs.extend(s3_inputs(item, resources["inbox_s3"].get_client(), pages))
            else:
                inputs.append(Path(item))
        names = output_names([item.name for item in inputs])
        workers = max(1, min(workers, len(inputs) or 1))
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
        page_step: dict[str, Any] = {"workers": render_processes} if render_processes is not None else {}
        if force:
            page_step["force"] = True
        if page_step:
            run_config["ops"] = {"page_images_and_parses": {"config": page_step}}
        # resolved once for every run (what `materialize` would redo per document), under the job the daemon runs too
        chain = Definitions(jobs=[document_chain_job], assets=document_assets, resources=resources).resolve_job_def(document_chain_job.name)

        bar = _Progress(len(inputs)) if progress else None

        def one(item: Path | SourceRef, name: str) -> dict[str, Any]:
            started = time.perf_counter()
            if isinstance(item, Path) and not item.is_file():
                result = {"document_id": None, "source": str(item), "status": "failed", "pages": None, "pages_ok": 0,
                          "quality": None, "output": None, "error": f"{item}: no such file"}  # fmt: skip
            else:
                ref = file_ref(item, pages) if isinstance(item, Path) else item
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
                result = _document_summary(storage, ref.document_id, outcome.success, error, resources["quality_targets"])
                result["run_id"] = outcome.run_id
                if output_dir is not None and result["status"] == "ok":
                    result["files"] = _copy_outputs(storage, ref.document_id, output_dir, name, formats)
            result["seconds"] = round(time.perf_counter() - started, 2)
            if json_lines:
                print(json.dumps(result), flush=True)
            elif bar is not None:
                bar.done(result)
            else:
                _print_result(result)
            return result

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medkg-document") as pool:
            results = list(pool.map(one, inputs, names))
        if bar is not None:
            bar.close()
    return results


OUTPUT_SUFFIXES = {"md": ".md", "json": ".json", "docling": ".docling.json", "dolma": ".dolma.jsonl"}


def _pages(value: str) -> tuple[int, ...]:
    from medkg_pdf.page_selection import parse_pages

    try:
        return parse_pages(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _formats(value: str) -> tuple[str, ...]:
    """`--format md,json,docling,dolma`: known names only, checked before any document runs."""
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [fmt for fmt in chosen if fmt not in OUTPUT_SUFFIXES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or value!r}; choose from {', '.join(OUTPUT_SUFFIXES)}")
    if "docling" in chosen:
        from medkg_pdf.exporters.docling import require_docling

        try:
            require_docling()
        except ImportError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return chosen


def _copy_outputs(storage, document_id: str, output_dir: Path, name: str, formats: tuple[str, ...] = ("md", "json")) -> list[str]:
    """`<name>.md`, `<name>.json`, `<name>.docling.json`, `<name>.dolma.jsonl` (those in `formats`) beside each
    other, as olmOCR's and marker's output folders hold them; one Dolma file per document, so parallel
    documents never append to one file."""
    from medkg_pdf import exporters, storage_keys
    from medkg_pdf.defs.documents.exports import stored_page_sizes
    from medkg_pdf.schemas import SourceInfo, StructuredDocument

    output_dir.mkdir(parents=True, exist_ok=True)
    copied = {"md": storage_keys.structured_markdown, "json": storage_keys.structured_json}
    document: StructuredDocument | None = None  # read once, for whichever exports are asked
    written = []
    for fmt in formats:
        target = output_dir / f"{name}{OUTPUT_SUFFIXES[fmt]}"
        if fmt in copied:
            target.write_bytes(storage.read_bytes(copied[fmt](document_id)))
        else:
            document = document or storage.read_model(storage_keys.structured_json(document_id), StructuredDocument)
            if fmt == "docling":
                sizes = stored_page_sizes(storage, document_id)
                target.write_text(exporters.docling_document(document, sizes, name=name).model_dump_json())
            else:
                info = storage.read_model(storage_keys.source_info(document_id), SourceInfo)
                target.write_text(json.dumps(exporters.dolma_record(document, info.source.uri)) + "\n")
        written.append(str(target))
    return written


class _Progress:
    """Documents done of total, pages/s, failures and ETA on the terminal's stderr (tqdm, which Dagster
    installs); each document's line goes to stdout, above the bar."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self._write = tqdm.write
        self.bar = tqdm(total=total, unit="doc", dynamic_ncols=True, file=sys.stderr)
        self.started = time.perf_counter()
        self.pages = 0
        self.failed = 0
        self.lock = threading.Lock()

    def done(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.pages += result.get("pages") or 0
            self.failed += result["status"] != "ok"
            self._write(_result_line(result))
            rate = self.pages / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} pages/s, {self.failed} failed", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()



def _result_line(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        quality = "no baseline (scanned)" if result["quality"] is None else f"{result['quality']:.3f}"
        outputs = result.get("files") or [result["output"]]
        gates = f"; UNDER A QUALITY GATE: {', '.join(result['gates_missed'])}" if result.get("gates_missed") else ""
        return (
            f"  ok      {result['source']}: {result['pages_ok']}/{result['pages']} pages, "
            f"match vs text layer {quality}{gates}, {result['seconds']:.1f} s\n          -> {', '.join(outputs)}"
        )
    error = result["error"] or ""
    error = error.removeprefix(f"{result['source']}: ")
    return f"  FAILED  {result['source']}: {error}"


def _print_result(result: dict[str, Any]) -> None:
    print(_result_line(result), flush=True)


def model_server_settings(args: argparse.Namespace) -> dict[str, str]:
    """The model server options as the MEDKG_* settings they override (the key by the name of its variable)."""
    settings = {}
    for option, variable in (("server", "MEDKG_VLLM_BASE_URL"), ("model", "MEDKG_VLLM_MODEL"), ("profile", "MEDKG_VLLM_PROFILE")):
        if getattr(args, option, None):
            settings[variable] = getattr(args, option)
    if getattr(args, "max_concurrency", None):
        settings["MEDKG_VLLM_MAX_CONCURRENCY"] = str(args.max_concurrency)
    if getattr(args, "api_key_env", None):
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SystemExit(f"medkg-pdf: --api-key-env {args.api_key_env}: that environment variable is not set")
        settings["MEDKG_VLLM_API_KEY"] = key
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    if args.max_concurrency and args.pages_in_flight:
        raise SystemExit("medkg-pdf: give --max-concurrency (per document) or --pages-in-flight (in all), not both")
    data_dir = _data_dir(args.data_dir)
    settings = model_server_settings(args)
    if "MEDKG_VLLM_API_KEY" in settings:  # the resource reads it as a Dagster EnvVar, from this process's environment
        os.environ["MEDKG_VLLM_API_KEY"] = settings["MEDKG_VLLM_API_KEY"]
    local = pdf_paths([arg for arg in args.files if not arg.startswith("s3://")])
    remote = [arg for arg in args.files if arg.startswith("s3://")]
    results = process_files(
        [*local, *remote],
        data_dir,
        json_lines=args.json,
        workers=args.workers,
        pages_in_flight=args.pages_in_flight,
        render_processes=args.render_processes,
        settings=settings,
        output_dir=Path(args.output_dir).resolve() if args.output_dir else None,
        formats=args.format,
        progress=not args.json and sys.stderr.isatty(),
        log_level="INFO" if args.verbose else "CRITICAL",  # by default the per-document lines say what failed
        force=args.force,
        pages=args.pages,
    )
    under_a_gate = args.strict and any(r.get("gates_missed") for r in results)
    return 0 if all(r["status"] == "ok" for r in results) and not under_a_gate else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from medkg_pdf.samples import write_samples

    data_dir = _data_dir(args.data_dir)
    started = time.perf_counter()
    paths = write_samples(data_dir / "samples")
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)  # --json: stdout is JSON lines only
    say(f"medkg-pdf demo: {len(paths)} generated sample PDFs in {data_dir / 'samples'}")
    results = process_files(paths, data_dir, json_lines=args.json, progress=not args.json and sys.stderr.isatty())
    ok = sum(r["status"] == "ok" for r in results)
    pages = sum(r["pages"] or 0 for r in results)
    report = build_report(data_dir)
    say(
        f"\n{ok}/{len(results)} documents ok, {pages} pages, {time.perf_counter() - started:.1f} s in all.\n"
        f"Outputs: {data_dir / 'documents'}\n"
        f"Quality report (tables and plots): {report}\n"
        f"Open the Dagster UI on these runs:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
        f"MEDKG_DATA_DIR={data_dir} {Path(sys.executable).parent / 'dagster'} dev -m medkg_pdf.definitions"
        "   (or, in the repo: make ui)"  # absolute paths and a module: works from any directory
    )
    return 0 if ok == len(results) else 1


def build_report(data_dir: Path) -> str:
    """Materialize the daily quality report over what is stored, as the daemon's schedule would; returns its folder."""
    from dagster import materialize

    from medkg_pdf import storage_keys
    from medkg_pdf.defs.reporting.assets import quality_report
    from medkg_pdf.resources import resources_for
    from medkg_pdf.schemas import ReportPointer

    resources = resources_for(dict(os.environ, MEDKG_DATA_DIR=str(data_dir)))
    materialize(
        [quality_report],
        instance=_instance(data_dir),
        resources={name: resources[name] for name in ("storage", "quality_targets", "pushgateway")},
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        tags={"medkg/trigger": "cli"},
    )
    pointer = resources["storage"].read_model(storage_keys.quality_report_latest(), ReportPointer)
    return resources["storage"].uri(pointer.documents_csv).rsplit("/", 1)[0]


def cmd_cache_gc(args: argparse.Namespace) -> int:
    from medkg_pdf.cache_retention import collect, parse_age
    from medkg_pdf.resources import resources_for
    from medkg_pdf.schemas import utc_now

    try:
        older_than = parse_age(args.older_than)
    except ValueError as error:
        raise SystemExit(f"medkg-pdf cache gc: {error}") from None
    storage = resources_for(dict(os.environ, MEDKG_DATA_DIR=str(_data_dir(args.data_dir))))["storage"]
    result = collect(storage, older_than, utc_now(), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(result.removed)} cache entries ({result.bytes_freed / 2**20:.1f} MiB) last written over "
          f"{args.older_than} ago; kept {result.kept}; under {storage.uri('cache')}")  # fmt: skip
    return 0


def cmd_serve_local(args: argparse.Namespace) -> int:
    from medkg_pdf.engine.server import main as serve_main

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.max_concurrency:
        argv += ["--max-concurrency", str(args.max_concurrency)]
    serve_main(argv)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medkg-pdf")
    except PackageNotFoundError:  # a source tree without an install
        return "unknown"


DATA_DIR_HELP = "where the Dagster instance and the outputs live (default: $MEDKG_DATA_DIR or ./.medkg-data)"


def build_parser() -> argparse.ArgumentParser:
    from medkg_pdf.profiles import PROFILES

    parser = argparse.ArgumentParser(prog="medkg-pdf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate sample medical PDFs and run the whole chain on them")
    demo.add_argument("--data-dir", help=DATA_DIR_HELP)
    demo.add_argument("--json", action="store_true", help="only one JSON object per document on stdout (the rest on stderr)")
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser(
        "run",
        help="run the whole chain on your own PDFs",
        description="Each document is its own Dagster run on a real instance; a bad file fails its own document only. "
        "Model server settings default to the MEDKG_VLLM_* environment (see the README); with none, the embedded CPU "
        "engine starts for the command.",
    )
    run.add_argument(
        "files",
        nargs="+",
        metavar="INPUT",
        help="PDF files, directories (their PDFs, recursively), globs ('docs/**/*.pdf'), @list.txt (one input per "
        "line) or s3://bucket/prefix (every .pdf under it)",
    )
    run.add_argument("--data-dir", help=DATA_DIR_HELP)
    run.add_argument("--pages", type=_pages, metavar="RANGE",
                     help="only these pages of each input, e.g. 1-5,9 (counting from 1): a document of its own, with its own id")
    run.add_argument("--strict", action="store_true",
                     help="exit 1 also when a document is under a blocking quality gate (match score, numeric recall), as the "
                     "daemon's runs fail on them; by default such documents are reported (gates_missed) and exit 0")
    run.add_argument("--force", action="store_true", help="ask the model for every page again, ignoring stored answers")
    run.add_argument("--output-dir", metavar="DIR", help="also write <name>.md and <name>.json per document here, named after its source")
    run.add_argument("--format", type=_formats, default=("md", "json"), metavar="LIST",
                     help="what --output-dir holds, comma-separated: md, json, docling (<name>.docling.json, needs the "
                     "'docling' extra), dolma (<name>.dolma.jsonl, olmOCR's Dolma record) (default: md,json)")
    server = run.add_argument_group("model server (override the MEDKG_VLLM_* environment)")
    server.add_argument("--server", metavar="URL", help="OpenAI-compatible server, e.g. http://vllm:8000 (default: $MEDKG_VLLM_BASE_URL, else the embedded engine)")
    server.add_argument("--model", help="served model name, as in GET /v1/models (default: $MEDKG_VLLM_MODEL)")
    server.add_argument("--profile", choices=sorted(PROFILES), help="model profile (default: inferred from the model name)")
    server.add_argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the server's API key (never the key itself: command lines show in ps)")
    work = run.add_argument_group("how much at once")
    work.add_argument("--workers", type=int, default=4, help="documents processed at once, each its own Dagster run (default 4)")
    work.add_argument("--max-concurrency", type=int, metavar="N", help="pages on the model server at once per document (default: $MEDKG_VLLM_MAX_CONCURRENCY, 8)")
    work.add_argument(
        "--pages-in-flight",
        type=int,
        metavar="N",
        help="pages on the model server at once across all workers, shared equally (instead of --max-concurrency)",
    )
    work.add_argument(
        "--render-processes",
        type=int,
        metavar="N",
        help="processes rendering a document of 64+ pages (default: one per core, the helpers shared by all "
        "workers); 1 renders in the document's own thread: ~100 MB less, slower with long documents",
    )
    shown = run.add_argument_group("what is printed")
    shown.add_argument("--json", action="store_true", help="only one JSON object per document on stdout, as each finishes")
    shown.add_argument("--verbose", action="store_true", help="the runs' Dagster logs on stderr (INFO)")
    run.set_defaults(func=cmd_run)
    cache = sub.add_parser("cache", help="the page cache (page PNGs and answers reused by re-runs)")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    gc = cache_sub.add_parser("gc", help="remove cache entries not written for a while (outputs are never touched)")
    gc.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w: entries last written before this long ago")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    gc.add_argument("--data-dir", help=DATA_DIR_HELP + "; with MEDKG_ENV=prod the S3 store")
    gc.set_defaults(func=cmd_cache_gc)
    serve = sub.add_parser("serve-local", help="serve the embedded OCR engine on the OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-concurrency", type=int, help="pages OCRed at once (default: one per two cores)")
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
