"""Does the daemon keep the model server busy? A UI backfill on a live Dagster vs a bare client.

Workload: 24 distinct PDFs of 20-40 pages (seeded; local files, registered as `documents` partitions
by hand the way test_e2e_dagster.py registers its archive: SourceRef written, GraphQL
`addDynamicPartition`). A real `dagster-webserver` + `dagster-daemon` (medkg_pdf_tests.support.live_dagster,
DAGSTER_HOME with a copy of the repo's dagster.yaml, optionally with the run queue, the backfill tag
limit and the `vllm` pool limit overridden in the copy) run a partition backfill of every document
over the whole chain (GraphQL `launchPartitionBackfill`, as the UI's Materialize dialog does): one
run per document (BackfillPolicy.multi_run(1)), each a process, its page step in the `vllm` pool
with MEDKG_VLLM_MAX_CONCURRENCY pages in flight. Timed from the launch mutation to the backfill's
COMPLETED status (and to the end of its last run).

Baseline, same run, same simulator: `python -m bench.bare_client` (PyMuPDF renders, httpx posts;
nothing else) as a whole process over the same PDFs with the same pages in flight as the pipeline
can have (pool limit x MEDKG_VLLM_MAX_CONCURRENCY), once before and once after the backfill; its
mean seconds / the backfill's seconds is the figure (1.0: the daemon keeps the server as busy as the
bare client; goal >= 0.90). The simulator's mean batch and busy share are shown for both.

`python -m bench.live_backfill [--regime fast|realistic] [--setting RUNS:BACKFILL_RUNS:POOL ...]`
(`repo` = the repo's dagster.yaml; each setting a fresh instance), or
`python -m bench.run_all --only live_backfill` (not in the default set: ~5 min per setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Section, fmt, open_instance, table
from bench.end_to_end import timed
from bench.live import FAST, REALISTIC, answer, code_env, describe, load, page_pdf, phase_table, run_timeline, write_home
from bench.simulator import Simulator

GOAL = 0.90
DOCS, PAGES = 24, (20, 40)
IN_FLIGHT = 8  # MEDKG_VLLM_MAX_CONCURRENCY default
FINISHED = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")


def parse_setting(text: str) -> tuple[int | None, int | None, int | None]:
    """`repo` -> no override; `6:6:3` -> max_concurrent_runs 6, backfill tag limit 6, pool limit 3 (`-` keeps one)."""
    if text == "repo":
        return None, None, None
    parts = [None if p in ("", "-") else int(p) for p in text.split(":")]
    return tuple(parts + [None] * (3 - len(parts)))[:3]  # type: ignore[return-value]


def backfill(dagster, partitions: list[str]) -> tuple[str, float, float]:
    """Launch a backfill of `partitions` over the chain; (id, monotonic launch time, seconds to a finished status)."""
    from medkg_pdf_tests.support.live_dagster import launch_backfill, wait_for

    launched = time.monotonic()
    backfill_id = launch_backfill(dagster, partitions)

    def status():
        dagster.check_alive()
        result = dagster.graphql(
            """query ($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }""",
            id=backfill_id,
        )["partitionBackfillOrError"]
        return result.get("status") if result.get("status") in FINISHED else None

    final = wait_for(f"backfill {backfill_id}", status, 3600, interval_s=0.5)
    seconds = time.monotonic() - launched
    assert final in ("COMPLETED", "COMPLETED_SUCCESS"), f"backfill ended {final}\n{dagster.logs()}"
    return backfill_id, launched, seconds


def one_setting(sim: Simulator, pdfs: list[Path], pages: int, setting: str, per_run: int) -> dict:
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.sources import file_ref, register
    from medkg_pdf_tests.support.live_dagster import add_partition, live_dagster, runs_tagged

    root = Path(tempfile.mkdtemp(prefix="medkg-live-backfill-"))
    try:
        settings = write_home(root / "dagster_home", *parse_setting(setting))
        in_flight = settings["pool_limit"] * per_run
        storage = LocalStorage(root=str(root / "data"))
        env = code_env(sim.url, sim.params.model, root / "data", in_flight=per_run)
        bare_env = {k: v for k, v in env.items() if not k.startswith("MEDKG_")}
        bare_env["PYTHONPATH"] = str(REPO)
        bare_argv = [sys.executable, "-m", "bench.bare_client", "--url", sim.url, "--model", sim.params.model,
                     "--in-flight", str(in_flight), *map(str, pdfs)]  # fmt: skip

        def bare() -> dict:
            result = timed(bare_argv, bare_env, sim, pages)  # resets the simulator, checks every page was answered
            result["busy"] = sim.stats()["busy_s"] / result["s"]
            result["load"] = load()
            print(f"  [{setting}] bare client, {in_flight} in flight: {result['s']:.1f} s, mean batch "
                  f"{result['mean_batch']:.1f}, busy {result['busy']:.0%}, load {result['load']}", flush=True)  # fmt: skip
            return result

        with live_dagster(root / "dagster_home", env) as dagster:
            ids = []
            for path in pdfs:
                ref = file_ref(path)
                register(storage, ref)
                add_partition(dagster, ref.document_id)
                ids.append(ref.document_id)
            bares = [bare()]
            time.sleep(5)
            sim.reset()
            backfill_id, launched, seconds = backfill(dagster, ids)
            stats, backfill_load = sim.stats(), load()
            runs = runs_tagged(dagster, "dagster/backfill", backfill_id)
            instance = open_instance(root / "dagster_home")
            launched_at = time.time() - (time.monotonic() - launched)  # wall clock, as the event log
            timelines = [{**run_timeline(instance, run["runId"]), "launched": launched_at} for run in runs]
            last_end = max(run["endTime"] for run in runs) - launched_at
            print(f"  [{setting}] backfill: {seconds:.1f} s to COMPLETED ({last_end:.1f} s to the last run's end), "
                  f"{len(runs)} runs, mean batch {stats['mean_batch']:.1f}, busy {stats['busy_s'] / seconds:.0%}, load {backfill_load}",
                  flush=True)  # fmt: skip
            bares.append(bare())
        bare_s = sum(b["s"] for b in bares) / len(bares)
        return {"setting": setting, **settings, "per_run": per_run, "in_flight": in_flight, "bare_s": bare_s,
                "bares": [b["s"] for b in bares], "bare_batch": sum(b["mean_batch"] for b in bares) / len(bares),
                "bare_busy": sum(b["busy"] for b in bares) / len(bares), "backfill_s": seconds, "last_end_s": last_end,
                "runs": len(runs), "batch": stats["mean_batch"], "busy": stats["busy_s"] / seconds,
                "first_request_s": stats["first_arrival"] - launched, "ratio": bare_s / seconds,
                "ratio_last_end": bare_s / last_end, "phases": phase_table(timelines, [("backfill launch -> run enqueued (backfill daemon)", "launched", "enqueued")]),
                "load": f"{bares[0]['load']} / {backfill_load} / {bares[1]['load']}"}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(settings: list[str], regime: str = "fast", docs: int = DOCS, per_run: int = IN_FLIGHT, seed: int = 7) -> Section:
    params = {"fast": FAST, "realistic": REALISTIC}[regime]
    rng = random.Random(seed)
    counts = [rng.randint(*PAGES) for _ in range(docs)]
    pdf_dir = Path(tempfile.mkdtemp(prefix="medkg-live-backfill-pdfs-"))
    pdfs = []
    for index, n in enumerate(counts):
        pdfs.append(pdf_dir / f"archive-{index:03d}.pdf")
        pdfs[-1].write_bytes(page_pdf(1000 + index, n))
    pages = sum(counts)
    print(f"{docs} PDFs, {pages} pages; server ({regime}): {describe(params)}", flush=True)
    results = []
    try:
        with Simulator(dataclasses.replace(params, answer=answer())) as sim:
            for setting in settings:
                results.append(one_setting(sim, pdfs, pages, setting, per_run))
    finally:
        shutil.rmtree(pdf_dir, ignore_errors=True)
    section = Section(f"Live backfill vs bare client ({regime} regime): does the daemon keep the server busy?")
    for r in results:
        section.add(f"backfill / bare client, launch -> COMPLETED ({r['setting']}: {r['max_concurrent_runs']} runs, "
                    f"backfill tag {r['backfill_tag_limit']}, pool {r['pool_limit']}, {r['in_flight']} pages in flight)",
                    r["ratio"], "", GOAL, gating=True,
                    note=f"bare {r['bare_s']:.1f} s vs backfill {r['backfill_s']:.1f} s; to the last run's end "
                         f"{r['last_end_s']:.1f} s (ratio {r['ratio_last_end']:.3f})")  # fmt: skip
    section.body.append(
        f"{docs} PDFs of {PAGES[0]}-{PAGES[1]} pages ({pages} pages, seed {seed}), {per_run} pages in flight per run "
        f"(MEDKG_VLLM_MAX_CONCURRENCY); bare client with pool limit x {per_run} in flight, run before and after the "
        f"backfill (mean of the two). Load: the 1-minute load average of the 2 shared cores after each part. Server ({regime}): {describe(params)}. Run queue dequeue every 5 s (Dagster's default)."
    )
    section.body.append(table(
        ["setting", "max runs", "backfill tag limit", "pool", "pages in flight", "bare s (before, after)", "backfill s",
         "to last run end s", "ratio bare/backfill", "ratio to last run end", "first request after s",
         "bare batch / busy", "backfill batch / busy", "load: bare / backfill / bare"],
        [[r["setting"], r["max_concurrent_runs"], r["backfill_tag_limit"], r["pool_limit"], r["in_flight"],
          f"{fmt(r['bare_s'])} ({', '.join(fmt(b) for b in r['bares'])})", r["backfill_s"], r["last_end_s"],
          f"{r['ratio']:.3f}", f"{r['ratio_last_end']:.3f}", r["first_request_s"],
          f"{r['bare_batch']:.1f} / {r['bare_busy']:.0%}", f"{r['batch']:.1f} / {r['busy']:.0%}", r["load"]] for r in results],
    ))  # fmt: skip
    for r in results:
        section.body.append(f"Runs of the backfill, setting {r['setting']}:\n\n{r['phases']}")
    return section


def run(quick: bool = False) -> Section:
    """For bench/run_all.py (`--only live_backfill`): the repo's dagster.yaml, fast regime (6 PDFs with --quick)."""
    return measure(["repo"], docs=6 if quick else DOCS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=("fast", "realistic"), default="fast")
    parser.add_argument("--setting", action="append", help="RUNS:BACKFILL_RUNS:POOL or `repo` (repeatable; default: repo)")
    parser.add_argument("--docs", type=int, default=DOCS)
    parser.add_argument("--per-run", type=int, default=IN_FLIGHT, help="MEDKG_VLLM_MAX_CONCURRENCY")
    args = parser.parse_args(argv)
    section = measure(args.setting or ["repo"], args.regime, args.docs, args.per_run)
    section.print()


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main()
