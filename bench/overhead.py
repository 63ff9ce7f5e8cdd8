"""Dagster's fixed cost per partition: 1-page documents, an instantly answering server, the whole chain.

On a persistent local instance (DAGSTER_HOME with the repository's dagster.yaml, SQLite) with
`resources_for()`, every measured run materializes `document_assets` (6 assets) for fresh
1-page documents (nothing cached):

* one multi-partition run over 1, 10 and 100 partitions (range tags
  `dagster/asset_partition_range_start`/`_end`, as a backfill under the BackfillPolicy runs them);
* one run per partition (as the sensor and `medkg-pdf run` make them), 30 runs in a row: the
  cost of 10 and 100 such runs is 10 and 100 times their mean (runs are independent; the first
  and last ten are compared to show the instance does not slow down as runs accumulate);
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
import subprocess
import sys
import time

from bench.common import REPO, Section, fresh_dir, instance_home, median, percentile, range_tags, table
from bench.simulator import SimParams, Simulator

LINES_OF = 3  # the documents' text (bench.common.document_lines), which the server answers, so the quality checks pass
SIM = SimParams(max_num_seqs=256, step_base_s=0.001, step_per_seq_s=0.0, tokens=1)
MULTI = (1, 10, 100)
SINGLE_RUNS = 30


_JOB: list = []


def chain_job():
    """`document_chain_job` from the code location (a reconstructable target, as a run worker loads it)."""
    if not _JOB:
        from medkg_pdf.definitions import defs

        _JOB.append(defs.get_job_def("document_chain_job"))
    return _JOB[0]


def import_seconds() -> float:
    """Wall time of `import medkg_pdf.definitions` in a fresh interpreter: what every run worker and step process pays."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import medkg_pdf.definitions"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def run(quick: bool = False) -> Section:
    from dagster import DagsterInstance, execute_job, materialize, reconstructable

    from bench.common import QUIET, document_lines, long_pdf
    from bench.slo import variant_pdf
    from medkg_pdf.assets import document_assets
    from medkg_pdf.partitions import documents
    from medkg_pdf.resources import resources_for
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.sources import file_ref, register

    section = Section("Orchestration overhead: Dagster's fixed cost per partition")
    multi = (1, 5, 20) if quick else MULTI
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

            def timed(**kwargs) -> float:
                started = time.perf_counter()
                result = materialize(document_assets, instance=instance, resources=resources, run_config=QUIET,
                                     raise_on_error=False, **kwargs)  # fmt: skip
                seconds = time.perf_counter() - started
                assert result.success, f"run {result.run_id} failed"
                return seconds

            timed(partition_key=new_documents(1)[0])  # warm-up: imports, instance tables, first connections
            multi_s = {}
            for n in multi:
                ids = new_documents(n)
                multi_s[n] = timed(partition_key=ids[0]) if n == 1 else timed(tags=range_tags(ids))
            single_s = [timed(partition_key=doc) for doc in new_documents(singles)]
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
    largest = multi[-1]
    section.add("one run per partition: seconds per run (median)", per_run, "s",
                note=f"P95 {percentile(single_s, 0.95):.2f} s over {len(single_s)} runs; first 10 mean "
                     f"{sum(single_s[:10]) / min(10, len(single_s)):.2f} s, last 10 mean {sum(single_s[-10:]) / min(10, len(single_s)):.2f} s")  # fmt: skip
    section.add(f"one multi-partition run: seconds per partition at {largest} partitions", multi_s[largest] / largest, "s",
                note=f"{multi_s[largest]:.1f} s for the run")
    section.add(f"{largest} partitions: one run per partition / one multi-partition run", mean_run * largest / multi_s[largest], "x",
                note=f"{mean_run * largest:.0f} s (projected from the mean) vs {multi_s[largest]:.0f} s")
    section.add("document_chain_job run (with its asset checks), 1 partition", daemon_style_s, "s",
                note=f"{'ok' if job_ok else 'FAILED'}; a launched run worker first imports the code location: "
                     f"{worker_import_s:.1f} s here")  # fmt: skip
    rows = []
    for n in multi:
        rows.append([n, multi_s[n], multi_s[n] / n, mean_run * n, mean_run * n / multi_s[n]])
    section.body.append(
        "Whole chain (6 assets) per 1-page document, instant server, SQLite instance with the repository's dagster.yaml. "
        "One run per partition: measured 1 and mean of "
        f"{len(single_s)} runs; the 10- and 100-run totals are n x that mean. Multi-partition: one run each, fresh partitions."
    )
    section.body.append(table(["partitions", "one multi-partition run (s)", "per partition (s)",
                               "one run per partition, total (s)", "ratio"], rows))  # fmt: skip
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
