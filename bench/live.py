"""Shared by bench/live_slo.py and bench/live_backfill.py: a live Dagster against the simulator.

The webserver + daemon come from `medkg_pdf_tests.support.live_dagster` (the e2e test's helpers: the repo's
dagster.yaml copied into a temp DAGSTER_HOME, `dagster instance migrate`, both processes in their own
sessions); this module adds what the benches need around it: a moto S3 server, the dagster.yaml
settings a bench may override (run queue, backfill tag limit, pool), the environment of the code
location, the realistic simulator regime, and each run's timeline from the instance's event log.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bench.common import percentile, table
from bench.simulator import LETTER_150DPI_TOKENS, SimParams
from medkg_pdf.chat_contract import PATCH_PX

# Real-time Qwen2.5-VL-7B-like server (seeds: ~3-5 s a page, request P95 < 15 s, 2-4 pages/s): decode
# step 10 ms + 0.25 ms per running sequence (1.1k tokens/s at 16), answers of 150-450 tokens, prefill
# 0.05 ms per prompt token (20k tokens/s, vision encoder included): a 150-DPI letter page (~2.7k image
# tokens, from its size in 28-px patches) costs ~0.14 s of engine time when it is admitted.
REALISTIC = SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.00025, tokens=150, tokens_max=450,
                      prefill_s_per_token=0.00005, seed=11)  # fmt: skip
# The fast regime of bench/end_to_end.py: 16 sequences, 18 ms full steps, 100 tokens, no prefill.
FAST = SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=100)
LINES_OF = 7  # every page carries bench.common.document_lines(7) plus its PDF's own line; the server answers the 7


def describe(params: SimParams, in_flight: int | None = None) -> str:
    """The regime in one line: step times, tokens, prefill, a page's service time, the ideal pages/s."""
    full = params.step_s(params.max_num_seqs)
    text = (f"max_num_seqs {params.max_num_seqs}, step {params.step_base_s * 1e3:g} ms + {params.step_per_seq_s * 1e3:g} "
            f"ms/seq ({full * 1e3:g} ms full), answers {params.tokens}-{params.tokens_max or params.tokens} tokens "
            f"(seed {params.seed})")  # fmt: skip
    if params.prefill_s_per_token:
        text += (f", prefill {params.prefill_s_per_token * 1e3:g} ms/prompt token x ~{LETTER_150DPI_TOKENS} image tokens "
                 f"(letter page, 150 DPI, {PATCH_PX}-px patches) = {params.prefill_s:.2f} s a page")  # fmt: skip
    if in_flight:
        text += f"; a page alone in a batch of {in_flight}: {params.latency_s(in_flight) + params.prefill_s:.1f} s"
    return text + f"; ideal {params.ideal_rps:.2f} pages/s at a full batch"


def page_pdf(index: int, pages: int) -> bytes:
    """A letter-size PDF whose pages carry the common lines plus one line of its own (no digits:
    the quality checks' numeric recall stays 1), so every PDF has its own text and bytes."""
    from bench.common import document_lines, long_pdf

    code = "".join(chr(97 + (index // 26**k) % 26) for k in range(3))
    return long_pdf([*document_lines(LINES_OF), f"Referral {code} from the outpatient clinic"], pages)


def answer() -> str:
    from bench.common import document_lines

    return "\n".join(document_lines(LINES_OF))


@contextmanager
def moto_s3(bucket: str) -> Iterator[tuple[str, Any]]:
    """moto in server mode on a loopback port (as the tests' `moto_server` fixture), with `bucket`."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per S3 request

    from medkg_pdf.engine.process import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")  # fmt: skip
        client.create_bucket(Bucket=bucket)
        yield url, client
    finally:
        server.stop()


def write_home(home: Path, runs: int | None = None, backfill_runs: int | None = None, pool: int | None = None) -> dict:
    """The e2e test's instance (the repo's dagster.yaml), with the given limits overridden in the copy;
    returns the settings in effect."""
    import yaml

    from medkg_pdf_tests.support.live_dagster import write_instance

    write_instance(home, None)
    path = home / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    queue, pools = config["concurrency"]["runs"], config["concurrency"]["pools"]
    if runs is not None:
        queue["max_concurrent_runs"] = runs
    if backfill_runs is not None:
        for limit in queue.get("tag_concurrency_limits", []):
            if limit["key"] == "dagster/backfill":
                limit["limit"] = backfill_runs
    if pool is not None:
        pools["default_limit"] = pool
    if (runs, backfill_runs, pool) != (None, None, None):
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    backfill = next((t["limit"] for t in queue.get("tag_concurrency_limits", []) if t["key"] == "dagster/backfill"), None)
    return {"max_concurrent_runs": queue["max_concurrent_runs"], "backfill_tag_limit": backfill,
            "pool_limit": pools["default_limit"], "overridden": (runs, backfill_runs, pool) != (None, None, None)}  # fmt: skip


def code_env(sim_url: str, model: str, data_dir: Path, in_flight: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of the webserver, the daemon and every run worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDKG_") and k != "DAGSTER_HOME"}
    env.update(MEDKG_ENV="local", MEDKG_DATA_DIR=str(data_dir), MEDKG_VLLM_BASE_URL=sim_url, MEDKG_VLLM_MODEL=model,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               PYTHONWARNINGS="ignore", **extra)  # fmt: skip
    if in_flight is not None:
        env["MEDKG_VLLM_MAX_CONCURRENCY"] = str(in_flight)
    return env


PAGE_STEP = "page_images_and_parses"


def run_timeline(instance, run_id: str) -> dict[str, float]:
    """Wall-clock marks of one run from its event log: queued, dequeued, started (the worker has loaded
    the code), the page step blocked on / granted the `vllm` pool, its end, the run's end."""
    from dagster import DagsterEventType as T

    marks: dict[str, float] = {}
    names = {T.RUN_ENQUEUED: "enqueued", T.RUN_STARTING: "launching",  # the queued coordinator logs no RUN_DEQUEUED
             T.RUN_START: "started", T.RUN_SUCCESS: "ended", T.RUN_FAILURE: "ended",
             T.RUN_CANCELED: "ended"}  # fmt: skip
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.step_key is None and event.event_type in names:
            marks.setdefault(names[event.event_type], entry.timestamp)
        elif event.step_key == PAGE_STEP:
            if event.event_type == T.ENGINE_EVENT and "blocked by limit for pool" in (entry.user_message or ""):
                marks.setdefault("pool_blocked", entry.timestamp)
            elif event.event_type == T.STEP_START:
                marks["page_step_start"] = entry.timestamp
            elif event.event_type in (T.STEP_SUCCESS, T.STEP_FAILURE):
                marks["page_step_end"] = entry.timestamp
    return marks


PHASES = [
    ("run queue: enqueued -> dequeued (launch begins)", "enqueued", "launching"),
    ("launch: dequeued -> run started (process start + code load)", "launching", "started"),
    ("started -> page step start (earlier steps + pool wait)", "started", "page_step_start"),
    ("  of which waiting for the vllm pool", "pool_blocked", "page_step_start"),
    ("page step (render + every page on the server)", "page_step_start", "page_step_end"),
    ("page step end -> run end (assemble, baseline, quality, checks)", "page_step_end", "ended"),
]


def phase_table(timelines: list[dict[str, float]], first: list[tuple[str, str, str]] | None = None) -> str:
    """P50 / P95 / max seconds of each phase over the runs (pool wait: 0 for a run never blocked)."""
    rows = []
    for label, start, end in (first or []) + PHASES:
        values = [t[end] - t[start] if start in t and end in t else 0.0 if start == "pool_blocked" else None
                  for t in timelines]  # fmt: skip
        values = [v for v in values if v is not None]
        if values:
            rows.append([label, len(values), *(percentile(values, q) for q in (0.5, 0.95, 1.0))])
    return table(["per run (s)", "runs", "P50", "P95", "max"], rows)


def load() -> str:
    """The 1-minute load average (the machine is shared: other work distorts real-time figures)."""
    return f"{os.getloadavg()[0]:.1f}"
