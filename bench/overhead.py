"""Dagster's fixed cost per partition: 1-page documents, an instantly answering server, the whole chain.

On a persistent local instance (DAGSTER_HOME with the repository's dagster.yaml, SQLite) with
`resources_for()`, every measured run materializes `document_assets` (6 assets in 5 steps:
`page_images` and `vlm_page_parses` are one step) for one fresh 1-page document (nothing cached).
Every document asset runs one document per run (`BackfillPolicy.multi_run(1)`; a multi-partition
run fails on purpose), so every run below covers one document:

* one run per partition one after another (as the sensor and a backfill make them), 30 runs in a
  row: the cost of 10 and 100 such runs is 10 and 100 times their mean (runs are independent; the
  first and last ten are compared to show the instance does not slow down as runs accumulate);
* 10 and 100 documents, one run each, 4 runs at once in threads of one process on
  `medkg_pdf.cli.threaded_instance` (what `medkg-pdf run --workers 4` does): how much of the fixed
  cost per run overlaps when runs go side by side;
* the chain as the daemon's run worker executes it: `execute_job` of `document_chain_job` from the
  code location (its in-process executor, plus the blocking asset checks; the server answers with
  the documents' own text so they pass), and the import of the code location that a freshly
  launched run worker process pays before that.

The per-partition work itself is tiny (a 1-page PDF rendered and parsed instantly), so what is
measured is orchestration: run creation, event log writes, step bookkeeping, resource setup.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import Section, fresh_dir, instance_home, median, percentile, table
from bench.simulator import SimParams, Simulator

LINES_OF = 3  # the documents' text (bench.common.document_lines), which the server answers, so the quality checks pass
SIM = SimParams(max_num_seqs=256, step_base_s=0.001, step_per_seq_s=0.0, tokens=1)
THREADED = (10, 100)  # documents run 4 at once in threads, one run each
THREADS = 4  # `medkg-pdf run --workers` default
SINGLE_RUNS = 30


def run(quick: bool = False) -> Section:
    from dagster import DagsterInstance, execute_job, materialize, reconstructable

    from bench.code_location import chain_job, import_seconds
    from bench.common import QUIET, document_lines, long_pdf, variant_pdf
    from medkg_pdf.defs.documents import document_assets
    from medkg_pdf.cli import threaded_instance
    from medkg_pdf.defs.partitions import documents
    from medkg_pdf.resources import resources_for
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.sources import file_ref, register

    section = Section("Orchestration overhead: Dagster's fixed cost per partition")
    threaded = (5, 20) if quick else THREADED
    singles = 6 if quick else SINGLE_RUNS
    root = fresh_dir("overhead")
    home = instance_home(root)
    data_dir = root / "data"
    base = long_pdf(document_lines(LINES_OF), 1)
    pdf_dir = root / "pdfs"
    pdf_dir.mkdir()
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "MEDKG_DATA_DIR", "MEDKG_VLLM_BASE_URL", "MEDKG_VLLM_MODEL")}
    params = dataclasses.replace(SIM, answer="\n".join(document_lines(LINES_OF)))
    with Simulator(params) as sim:
        os.environ.update(DAGSTER_HOME=str(home), MEDKG_DATA_DIR=str(data_dir), MEDKG_VLLM_BASE_URL=sim.url,
                          MEDKG_VLLM_MODEL=SIM.model)  # fmt: skip
        try:
            instance = DagsterInstance.from_config(str(home))
            resources = resources_for(os.environ)
            storage: LocalStorage = resources["storage"]
            counter = iter(range(10**6))

            def new_documents(count: int) -> list[str]:
                ids = []
                for _ in range(count):
                    index = next(counter)
                    path = pdf_dir / f"one-page-{index:04d}.pdf"
                    path.write_bytes(variant_pdf(base, 1, f"one page {index}"))
                    ref = file_ref(path)
                    register(storage, ref)
                    ids.append(ref.document_id)
                instance.add_dynamic_partitions(documents.name, ids)
                return ids

            def timed(doc: str, on=None) -> float:
                started = time.perf_counter()
                result = materialize(document_assets, instance=on or instance, resources=resources, run_config=QUIET,
                                     raise_on_error=False, partition_key=doc)  # fmt: skip
                seconds = time.perf_counter() - started
                assert result.success, f"run {result.run_id} failed"
                return seconds

            timed(new_documents(1)[0])  # warm-up: imports, instance tables, first connections
            single_s = [timed(doc) for doc in new_documents(singles)]
            threads_instance = threaded_instance(str(home), THREADS)
            threaded_s = {}
            for n in threaded:
                ids = new_documents(n)
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=THREADS) as pool:
                    list(pool.map(lambda doc: timed(doc, threads_instance), ids))
                threaded_s[n] = time.perf_counter() - started
            os.environ["PYTHONWARNINGS"] = "ignore"
            job_s, job_ok = [], True
            for doc in new_documents(4):  # the first loads the code location's definitions
                started = time.perf_counter()
                result = execute_job(reconstructable(chain_job), instance=instance, tags={"dagster/partition": doc},
                                     run_config=QUIET, raise_on_error=False)  # fmt: skip
                job_s.append(time.perf_counter() - started)
                job_ok = job_ok and result.success
            daemon_style_s = median(job_s[1:])
            worker_import_s = import_seconds()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            os.environ.pop("PYTHONWARNINGS", None)
    per_run = median(single_s)
    mean_run = sum(single_s) / len(single_s)
    largest = threaded[-1]
    section.add("one run per partition: seconds per run (median)", per_run, "s",
                note=f"P95 {percentile(single_s, 0.95):.2f} s over {len(single_s)} runs; first 10 mean "
                     f"{sum(single_s[:10]) / min(10, len(single_s)):.2f} s, last 10 mean {sum(single_s[-10:]) / min(10, len(single_s)):.2f} s")  # fmt: skip
    section.add(f"{THREADS} runs at once in threads: seconds per partition at {largest} partitions", threaded_s[largest] / largest,
                "s", note=f"{threaded_s[largest]:.1f} s for {largest} runs (as `medkg-pdf run --workers {THREADS}`)")
    section.add(f"{largest} partitions: one after another / {THREADS} at once in threads", mean_run * largest / threaded_s[largest],
                "x", note=f"{mean_run * largest:.0f} s (projected from the mean) vs {threaded_s[largest]:.0f} s")
    section.add("document_chain_job run (with its asset checks), 1 partition", daemon_style_s, "s",
                note=f"{'ok' if job_ok else 'FAILED'}; a launched run worker first imports the code location: "
                     f"{worker_import_s:.1f} s here")  # fmt: skip
    rows = []
    for n in threaded:
        rows.append([n, mean_run * n, threaded_s[n], threaded_s[n] / n, mean_run * n / threaded_s[n]])
    section.body.append(
        "Whole chain (6 assets, 5 steps) per 1-page document, one run per document (the only kind the package "
        "allows), instant server, SQLite instance with the repository's dagster.yaml. One after another: mean of "
        f"{len(single_s)} runs; the totals are n x that mean. In threads: {THREADS} runs at once in one process on "
        "`threaded_instance` (pool limit raised to the thread count), fresh partitions, measured."
    )
    section.body.append(table(["partitions (one run each)", "one after another, total (s)", f"{THREADS} at once in threads (s)",
                               "in threads, per partition (s)", "ratio"], rows))  # fmt: skip
    section.body.append(
        f"A run the daemon launches also pays for its run worker process: {worker_import_s:.1f} s here to start Python and "
        f"import the code location (DefaultRunLauncher; with the K8sRunLauncher a pod start comes on top), before its "
        f"{daemon_style_s:.1f} s of `document_chain_job` (in-process executor: no process per step)."
    )
    return section


if __name__ == "__main__":
    result = run()
    for figure in result.figures:
        print(figure.row())
    print("\n\n".join(result.body))
