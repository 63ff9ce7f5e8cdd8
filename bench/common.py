"""Shared by the benchmarks: workloads, Dagster instances and runs, timings, figures with targets."""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from medkg_pdf.metrics import nearest_rank

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
OUT_DIR = BENCH_DIR / "out"  # scratch data of a run (git-ignored)

warnings.filterwarnings("ignore", module="dagster")
warnings.filterwarnings("ignore", category=DeprecationWarning)


# ----- figures --------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One reported number; `gating` figures (ratios against same-run baselines) decide the exit code."""

    name: str
    value: float | None
    unit: str = ""
    target: float | None = None
    op: str = ">="  # value op target passes
    gating: bool = False
    note: str = ""
    kind: str | None = None  # shown instead of ratio/absolute

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        return {">=": self.value >= self.target, "<=": self.value <= self.target,
                "<": self.value < self.target, ">": self.value > self.target}[self.op]  # fmt: skip

    @property
    def verdict(self) -> str:
        return {None: "info", True: "PASS", False: "MISS"}[self.passed]

    def row(self) -> str:
        value = "n/a" if self.value is None else fmt(self.value)
        target = "" if self.target is None else f"{self.op} {fmt(self.target)}"
        unit = f" {self.unit}" if self.unit else ""
        kind = self.kind or ("ratio" if self.gating else ("absolute" if self.target is not None else ""))
        return f"| {self.name} | {value}{unit} | {target}{unit if target else ''} | {self.verdict} | {kind} | {self.note} |"


@dataclass
class Section:
    title: str
    figures: list[Figure] = field(default_factory=list)
    body: list[str] = field(default_factory=list)  # markdown paragraphs / tables
    plots: list[str] = field(default_factory=list)  # file names in bench/
    seconds: float = 0.0
    error: str | None = None

    def add(self, *args, **kwargs) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        return figure

    def print(self) -> None:
        """The section as a standalone bench prints it: title, figure rows, then the body."""
        print(f"\n## {self.title}\n")
        for figure in self.figures:
            print(figure.row())
        print("\n" + "\n\n".join(self.body))


def fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in row) + " |")
    return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank, as medkg_pdf.slo and RunStats compute it."""
    result = nearest_rank(values, q)
    if result is None:
        raise ValueError("percentile of no samples")
    return result


# ----- machine ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import dagster
    import pymupdf

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "pymupdf": pymupdf.__version__,
        "platform": platform.platform(),
        "load_at_start": load,
    }


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----- workloads ----------------------------------------------------------------------------------------

_LINES = [
    "Amoxicillin 500 mg by mouth every 8 hours for 7 days; reassess at 48 h.",
    "BP 132/84 mmHg, HR 88 bpm, SpO2 97 % on room air, temperature 37.9 C.",
    "HbA1c 7.4 % (target < 7 %); metformin 1000 mg twice daily with meals.",
    "Creatinine 1.3 mg/dL, eGFR 54 mL/min/1.73 m2: adjust renally cleared doses.",
    "Warfarin 5 mg daily, INR goal 2.0-3.0; check INR in 5 days.",
    "Sepsis bundle: lactate, cultures, 30 mL/kg crystalloid within 3 hours.",
]


def document_lines(doc_index: int, count: int = 45) -> list[str]:
    """Distinct text per document (so every document has its own page images)."""
    return [f"Doc {doc_index:03d} line {i + 1:02d}: {_LINES[(doc_index + i) % len(_LINES)]}" for i in range(count)]


def long_pdf(lines: list[str], pages: int) -> bytes:
    """`pdf_factory.text_pdf` for up to 10 pages, then full copies of its pages (text_pdf's save is
    superlinear: ~2 min for 1 000 pages, this takes ~1 s)."""
    import pymupdf

    from medkg_pdf_tests.support.pdf_factory import text_pdf

    base = text_pdf(lines, pages=min(pages, 10))
    if pages <= 10:
        return base
    doc = pymupdf.open(stream=base, filetype="pdf")
    for number in range(10, pages):
        doc.fullcopy_page(number % 10)
    data = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def variant_pdf(base: bytes, pages: int, tag: str) -> bytes:
    """The first `pages` pages of `base`, made a distinct file (its own sha256, so nothing is cached)."""
    import pymupdf

    doc = pymupdf.open(stream=base, filetype="pdf")
    doc.select(list(range(pages)))
    doc.set_metadata({"title": tag, "producer": "medkg-pdf bench"})
    data = doc.tobytes(garbage=3, deflate=True)
    doc.close()
    return data


def write_pdfs(directory: Path, page_counts: list[int], prefix: str = "doc") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, pages in enumerate(page_counts):
        path = directory / f"{prefix}-{index:03d}.pdf"
        path.write_bytes(long_pdf(document_lines(index), pages))
        paths.append(path)
    return paths


def fresh_dir(name: str) -> Path:
    path = OUT_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def instance_home(root: Path, *, with_repo_config: bool = True) -> Path:
    """A DAGSTER_HOME with the repository's dagster.yaml (pools, run queue limits): a real local instance."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    if with_repo_config:
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def open_instance(home: Path):
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(home))


def register_paths(storage, instance, paths: list[Path]) -> list[str]:
    from medkg_pdf_tests.support.chain import register_files

    return register_files(storage, instance, paths)


# Every document asset runs one document per run (`BackfillPolicy.multi_run(1)`; a step handed
# several partitions fails on purpose), so every benchmark run below has exactly one partition_key.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

# `page_images` and `vlm_page_parses` are one step (a multi-asset): its op name, the key of its run
# config (`ops: {PAGES_STEP: {config: RenderConfig}}`) and its step key in the event log.
PAGES_STEP = "page_images_and_parses"


def pages_config(**render: Any) -> dict:
    """Run config for the pages step's RenderConfig (workers, parallel_min_pages, ...), logs quiet."""
    return {"ops": {PAGES_STEP: {"config": render}}, **QUIET}


def unused_s3():
    from dagster_aws.s3 import S3Resource

    return S3Resource(region_name="us-east-1")


def unused_vllm(**settings):
    """The pages step needs a `vllm` resource even when only `page_images` is selected; nothing listens here."""
    from medkg_pdf.resources.vllm import VLLMResource

    return VLLMResource(base_url="http://127.0.0.1:9", **settings)


def quality_targets():
    from medkg_pdf.resources.quality import QualityTargets

    return QualityTargets()


def materialize(assets, instance, resources: dict, *, partition_key: str | None = None, tags: dict | None = None,
                run_config=None, selection=None):  # fmt: skip
    from dagster import materialize as dagster_materialize

    result = dagster_materialize(
        assets,
        instance=instance,
        resources={"quality_targets": quality_targets(), **resources},
        partition_key=partition_key,
        tags=tags,
        run_config=run_config or QUIET,
        selection=selection,
        raise_on_error=False,
    )
    if not result.success:
        errors = [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]
        raise RuntimeError(f"run {result.run_id} failed: {errors[:2]}")
    return result


def step_times(instance, run_id: str) -> dict[str, dict[str, float]]:
    """Per step: start / output / last_output / end wall-clock timestamps from the run's event log (what the UI shows).

    `output` is the step's first STEP_OUTPUT, `last_output` its last: for a single-output step both
    are when the asset function returned. The pages step (`PAGES_STEP`) yields `page_images` when
    every page is rendered (and, if `vlm_page_parses` is selected too, answered), then
    `vlm_page_parses`. Between `last_output` and `end` Dagster writes the step's materialization events.
    """
    from dagster import DagsterEventType

    steps: dict[str, dict[str, float]] = {}
    run_bounds: dict[str, float] = {}
    wanted = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_OUTPUT,
              DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE}  # fmt: skip
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type not in wanted:
            continue
        if event.step_key is None:
            run_bounds[event.event_type.value] = entry.timestamp
            continue
        slot = steps.setdefault(event.step_key, {})
        if event.event_type == DagsterEventType.STEP_START:
            slot["start"] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_OUTPUT:
            slot.setdefault("output", entry.timestamp)  # the asset function has returned (its first output)
            slot["last_output"] = entry.timestamp
        else:
            slot["end"] = entry.timestamp
    steps["__run__"] = {"start": run_bounds.get("PIPELINE_START", run_bounds.get("RUN_START", math.nan)),
                        "end": run_bounds.get("PIPELINE_SUCCESS", run_bounds.get("RUN_SUCCESS", math.nan))}  # fmt: skip
    return steps


def step_seconds(instance, run_id: str, step_key: str) -> float:
    times = step_times(instance, run_id)[step_key]
    return times["end"] - times["start"]


def python() -> str:
    return sys.executable
