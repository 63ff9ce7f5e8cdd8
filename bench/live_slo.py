"""The SLOs measured, not modelled: real time, uncompressed, the whole daemon path on a live Dagster.

PDFs of 5-30 pages (seeded; every PDF has its own text and bytes, so no page comes from the
cache) are uploaded to an S3 inbox (moto in server mode) at Poisson arrival times (seeded; exactly rate x
duration PDFs, 72/h by default, >= the 60/h SLO) for `--minutes` (15) of real time. A real `dagster-webserver` and
`dagster-daemon` (medkg_pdf_tests.support.live_dagster; DAGSTER_HOME holds a copy of the repo's
dagster.yaml) run the `s3_arrival_sensor` (turned on through GraphQL `startSensor`, its default
30 s interval unless `--sensor-interval`), which registers each PDF and requests one
`document_chain_job` run; the QueuedRunCoordinator starts them (`max_concurrent_runs`), each in its
own process, the page step in the `vllm` pool, 8 pages in flight per run. The model server is
bench/simulator.py in the realistic regime of bench/live.py (continuous batching, prefill of the
page image, answers of 150-450 tokens: a few seconds a page). After the last arrival the bench
waits for the backlog to drain (bounded by `--drain-minutes`).

Latency per PDF: upload (put_object returned) -> `DocumentQuality.completed_at` (quality.json,
written right after structured.json; the mtime of structured.json is shown too). Throughput:
completed PDFs per hour from the first upload to the last completion, and completions inside the
arrival window / its length. A PDF counts as failed when its run did not succeed or it has no
quality.json when the wait ends. No baseline and no scaling: these are the absolute SLO figures
of this machine (2 shared cores run the daemon, webserver, run workers, moto and the simulator).

`python -m bench.live_slo [--minutes 15] [--rate-per-h 72] [--seed N] [--sensor-interval S]`
(~20 min with the defaults), or `python -m bench.run_all --only live_slo` (not in the default set).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Section, fmt, open_instance, percentile, table
from bench.live import REALISTIC, answer, code_env, describe, load, moto_s3, page_pdf, phase_table, run_timeline, write_home
from bench.simulator import Simulator

BUCKET, INBOX = "medkg-inbox", "incoming/"
PAGES = (5, 30)
TARGETS = {"P50": 45.0, "P95": 90.0, "P99": 120.0}
IN_FLIGHT = 8  # MEDKG_VLLM_MAX_CONCURRENCY default


def arrivals(minutes: float, rate_per_h: float, seed: int) -> list[tuple[float, int]]:
    """(seconds after the start, pages) of every PDF: a Poisson process conditioned on its expected count,
    i.e. N = rate x duration arrivals at sorted uniform times (given N, a Poisson process's arrival times are
    uniform order statistics), so the offered load is the nominal rate whatever the seed; uniform page counts."""
    rng = random.Random(seed)
    times = sorted(rng.uniform(0, minutes * 60) for _ in range(max(1, round(rate_per_h * minutes / 60))))
    return [(t, rng.randint(*PAGES)) for t in times]


def measure(minutes: float = 15, rate_per_h: float = 72, seed: int = 20261124, sensor_interval: int | None = None,
            drain_minutes: float = 10, runs: int | None = None, pool: int | None = None) -> Section:  # fmt: skip
    from medkg_pdf import storage_keys
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.schemas import DocumentQuality, PageParses
    from medkg_pdf.sources import s3_ref
    from medkg_pdf_tests.support.live_dagster import SENSOR, live_dagster, runs_tagged

    plan = arrivals(minutes, rate_per_h, seed)
    bodies = [page_pdf(i, pages) for i, (_, pages) in enumerate(plan)]
    keys = [f"{INBOX}referral-{i:03d}.pdf" for i in range(len(plan))]
    docs = [s3_ref(BUCKET, key).document_id for key in keys]
    root = Path(tempfile.mkdtemp(prefix="medkg-live-slo-"))
    home, data_dir = root / "dagster_home", root / "data"
    settings = write_home(home, runs=runs, pool=pool)
    storage = LocalStorage(root=str(data_dir))
    print(f"{len(plan)} PDFs ({sum(p for _, p in plan)} pages) over {minutes:g} min at {rate_per_h:g}/h (seed {seed}); "
          f"server: {describe(REALISTIC, IN_FLIGHT)}; home {home}", flush=True)  # fmt: skip
    uploads: dict[str, float] = {}
    with Simulator(dataclasses.replace(REALISTIC, answer=answer())) as sim, moto_s3(BUCKET) as (s3_url, s3):
        extra = {"MEDKG_INBOX_BUCKET": BUCKET, "MEDKG_INBOX_PREFIX": INBOX, "MEDKG_S3_ENDPOINT_URL": s3_url}
        if sensor_interval is not None:
            extra["MEDKG_INBOX_INTERVAL_SECONDS"] = str(sensor_interval)
        env = code_env(sim.url, REALISTIC.model, data_dir, **extra)
        with live_dagster(home, env) as dagster:
            data = dagster.graphql(
                """mutation ($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
                     ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
                selector=SENSOR,
            )
            assert data["startSensor"].get("sensorState", {}).get("status") == "RUNNING", data
            sim.reset()
            t0, load_start = time.time(), load()

            def upload() -> None:
                for (at, _), key, doc, body in zip(plan, keys, docs, bodies):
                    time.sleep(max(0.0, t0 + at - time.time()))
                    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                    uploads[doc] = time.time()

            uploader = threading.Thread(target=upload, daemon=True)
            uploader.start()
            deadline, progress = t0 + minutes * 60 + drain_minutes * 60, (0, 0)
            while time.time() < deadline:
                time.sleep(5)
                dagster.check_alive()
                by_doc: dict[str, list[dict]] = {}
                for run in runs_tagged(dagster, "medkg/trigger", "s3-arrival"):
                    by_doc.setdefault(run["tags"].get("dagster/partition"), []).append(run)
                done = sum(1 for doc in uploads if by_doc.get(doc) and all(
                    r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in by_doc[doc]))  # fmt: skip
                if (len(uploads), done) != progress:
                    progress = (len(uploads), done)
                    print(f"  {time.time() - t0:5.0f} s: {len(uploads)}/{len(plan)} uploaded, {done} finished", flush=True)
                if not uploader.is_alive() and done == len(plan):
                    break
            engine, load_end = sim.stats(), load()
            instance = open_instance(home)
            last = {doc: max(runs_, key=lambda r: r["creationTime"]) for doc, runs_ in by_doc.items()}  # a retry's run, if any
            timelines = {doc: run_timeline(instance, run["runId"]) for doc, run in last.items()}
            statuses = {doc: run["status"] for doc, run in last.items()}

    ok, latencies, structured, completions, page_latency = [], [], [], [], []
    for doc, (_, pages) in zip(docs, plan):
        quality = storage.read_model_or_none(storage_keys.quality(doc), DocumentQuality)
        if doc not in uploads or quality is None or statuses.get(doc) != "SUCCESS":
            continue
        done = quality.completed_at.timestamp()
        ok.append(doc)
        latencies.append(done - uploads[doc])
        completions.append(done)
        path = data_dir / storage_keys.structured_json(doc)
        if path.exists():
            structured.append(path.stat().st_mtime - uploads[doc])
        parses = storage.read_model_or_none(storage_keys.page_parses(doc), PageParses)
        page_latency += [p.latency_s for p in parses.pages] if parses else []
    failed = [doc for doc in docs if doc not in ok]
    window = minutes * 60
    first = min(uploads.values())
    span = (max(completions) - first) if completions else float("nan")
    per_h_span = len(ok) / span * 3600 if completions else 0.0
    per_h_window = sum(1 for c in completions if c - t0 <= window) / window * 3600
    for doc in docs:
        if doc in uploads and doc in timelines:
            timelines[doc]["uploaded"] = uploads[doc]
    wall = (max(completions) if completions else time.time()) - first
    shutil.rmtree(root, ignore_errors=True)

    section = Section("SLOs, live: real time, uncompressed (S3 inbox -> sensor -> run queue -> assets, simulated vLLM)")
    quantiles = [("P50", 0.5), ("P95", 0.95), ("P99", 0.99)]
    for name, q in quantiles:
        section.add(f"live per-PDF latency {name}, upload -> quality.json (real time)",
                    percentile(latencies, q) if latencies else None, "s", TARGETS[name], op="<",
                    note=f"upload -> structured.json {percentile(structured, q):.1f} s" if structured else "")  # fmt: skip
    section.add("live PDFs per hour, first upload -> last completion", per_h_span, "/h", 60.0,
                note=f"inside the {minutes:g}-min arrival window: {per_h_window:.1f}/h; offered {len(plan) / window * 3600:.1f}/h")
    section.add("live error rate", len(failed) / len(plan) if plan else 0.0, "", 0.02, op="<",
                note=f"{len(failed)} of {len(plan)} PDFs failed or unfinished" + (f": {', '.join(failed[:4])}" if failed else ""))
    head = table(["real time, uncompressed", "value", "target"], [
        *[[f"upload -> quality.json {name} (s)", fmt(percentile(latencies, q)) if latencies else "n/a", f"< {TARGETS[name]:g}"]
          for name, q in quantiles],
        *[[f"upload -> structured.json {name} (s)", fmt(percentile(structured, q)) if structured else "n/a", ""]
          for name, q in quantiles],
        ["max upload -> quality.json (s)", fmt(max(latencies)) if latencies else "n/a", ""],
        ["PDFs/h, first upload -> last completion", fmt(per_h_span), ">= 60"],
        [f"PDFs/h completed inside the {minutes:g}-min arrival window", fmt(per_h_window), ">= 60"],
        ["PDFs uploaded / succeeded / failed or unfinished", f"{len(plan)} / {len(ok)} / {len(failed)}", ""],
        ["error rate", f"{len(failed) / max(1, len(plan)):.1%}", "< 2 %"],
        ["mean pages per PDF", fmt(sum(p for _, p in plan) / max(1, len(plan))), ""],
        ["per-page latency P5 / P50 / P95, client side (s)",
         " / ".join(fmt(percentile(page_latency, q)) for q in (0.05, 0.5, 0.95)) if page_latency else "n/a", ""],
    ])  # fmt: skip
    server = table(["simulator (first upload -> last completion)", "value"], [
        ["requests completed", engine["completed"]],
        ["mean batch while busy (of max_num_seqs 16)", fmt(engine["mean_batch"])],
        ["busy share of the wall time", f"{engine['busy_s'] / wall:.1%}"],
        ["  of which prefill", f"{engine['prefill_s'] / wall:.1%}"],
        ["max running / max waiting", f"{engine['max_running']} / {engine['max_waiting']}"],
        ["mean queue / mean latency per request (s)",
         f"{engine['queue_s_total'] / max(1, engine['completed']):.2f} / {engine['latency_s_total'] / max(1, engine['completed']):.2f}"],
        ["offered load / ideal (pages/s)", f"{sum(p for _, p in plan) / window:.2f} / {REALISTIC.ideal_rps:.2f}"],
    ])  # fmt: skip
    interval = f"{sensor_interval} s (--sensor-interval)" if sensor_interval is not None else "30 s (default, MEDKG_INBOX_INTERVAL_SECONDS unset)"
    config = (f"Config: dagster.yaml {'with overrides' if settings['overridden'] else 'of the repo, unchanged'}: "
              f"max_concurrent_runs {settings['max_concurrent_runs']} (backfill tag limit {settings['backfill_tag_limit']}), "
              f"`vllm` pool limit {settings['pool_limit']}, {IN_FLIGHT} pages in flight per run (MEDKG_VLLM_MAX_CONCURRENCY "
              f"default), sensor interval {interval}, run queue dequeue every 5 s (Dagster's default). Arrivals: {len(plan)} "
              f"PDFs, Poisson {rate_per_h:g}/h, seed {seed}, {minutes:g} min, {PAGES[0]}-{PAGES[1]} pages. Server: "
              f"{describe(REALISTIC, IN_FLIGHT)}. Wall: first upload -> last completion {wall:.0f} s. "
              f"1-min load average (2 cores, shared) at the start / end: {load_start} / {load_end}.")  # fmt: skip
    phases = phase_table(list(timelines.values()), [("sensor: upload -> run enqueued", "uploaded", "enqueued")])
    section.body += [config, head, server, phases]
    return section


def run(quick: bool = False) -> Section:
    """For bench/run_all.py (`--only live_slo`): 15 minutes of arrivals, 2 with --quick."""
    return measure(minutes=2 if quick else 15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15, help="minutes of arrivals, real time")
    parser.add_argument("--rate-per-h", type=float, default=72)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--sensor-interval", type=int, help="MEDKG_INBOX_INTERVAL_SECONDS (default: unset, 30 s)")
    parser.add_argument("--drain-minutes", type=float, default=10, help="longest wait for the backlog after the last arrival")
    parser.add_argument("--runs", type=int, help="override max_concurrent_runs in the copied dagster.yaml")
    parser.add_argument("--pool", type=int, help="override the pool default_limit in the copied dagster.yaml")
    args = parser.parse_args(argv)
    section = measure(args.minutes, args.rate_per_h, args.seed, args.sensor_interval, args.drain_minutes, args.runs, args.pool)
    section.print()


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main()
