"""Does the parse step keep a vLLM server saturated? The `vlm_page_parses` step alone versus a bare httpx client.

A step-level figure, not the whole pipeline (`bench/end_to_end.py` times whole processes from
spawn to exit). `page_images` and `vlm_page_parses` are one Dagster step, `page_images_and_parses`,
which renders pages and sends each to the server as it is rendered. Here the pages are rendered
once beforehand (a run per document selecting `source_pdf` + `page_images`), and every measured
run selects only `vlm_page_parses`: the same step, which then reuses the stored page images of the
PDF instead of rendering, so what is timed is the parse half of the step (rendering excluded, as the
baseline has its PNGs in memory). Rendering is measured by `bench/render.py`.

Workload: one run per document, as the package requires (`document_backfill_policy`: one
partition per run). Each point of the concurrency sweep uses one distinct PDF (`pdf_factory.text_pdf`
pages) large enough for ~12 rounds of requests at that concurrency: 20 pages at 1 in flight, 200
pages from 16 up. Every measured run goes through `dagster.materialize` for that one partition
against the simulator: the real asset, resource, retries, breaker and storage writes. Each run uses
a new `prompt_version`, so no page comes from the cache.

Baseline, in the same process and run of this script: a minimal httpx.AsyncClient posting the same
PNGs (read into memory beforehand, base64-encoded per request like the pipeline does) to the same
simulator with the same concurrency. Pipeline throughput is pages / duration of the step's function
(STEP_START to its STEP_OUTPUT in the event log: manifest and cache reads, every request, every
stored result and the document's record); the whole step (with Dagster's output and
materialization events) and the whole `materialize` call (run start, resource setup, run end) are
reported next to it. Repetitions alternate which side goes first, and medians are compared.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    PAGES_STEP,
    Section,
    fresh_dir,
    instance_home,
    materialize,
    median,
    open_instance,
    register_paths,
    step_times,
    table,
    unused_s3,
    unused_vllm,
    write_pdfs,
)
from bench.simulator import SimParams, Simulator, stats_delta
from medkg_pdf.chat_contract import page_messages

SIM = SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=50)
MAX_PAGES = 200  # the largest document (used from 16 in flight up, and for the headline)
ROUNDS = 12  # requests per slot at each point of the sweep
CONCURRENCIES = (1, 4, 8, 16, 24, 32)
HEADLINE_CONCURRENCY = 24  # 1.5 x max_num_seqs: see the sweep
HEADLINE_REPEATS = 2  # plus the sweep's own sample at that concurrency: 3 samples a side
PLOT = "throughput_vs_concurrency.png"


def bare_body(model: str, prompt: str, png: bytes) -> dict:
    return {
        "model": model,
        "messages": page_messages(png, prompt),
        "temperature": 0.0,
        "seed": 42,
        "max_tokens": 4096,
    }  # fmt: skip


def bare_client(url: str, model: str, prompt: str, pngs: list[bytes], concurrency: int) -> float:
    """Seconds for a minimal client to get every page answered with `concurrency` requests in flight."""
    import httpx

    async def main() -> float:
        started = time.perf_counter()
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(png: bytes) -> None:
                async with semaphore:
                    response = await client.post("/v1/chat/completions", json=bare_body(model, prompt, png))
                    response.raise_for_status()
                    response.json()["choices"][0]["message"]["content"]

            await asyncio.gather(*(one(png) for png in pngs))
        return time.perf_counter() - started

    return asyncio.run(main())


def pages_for(concurrency: int) -> int:
    """Pages of the document measured at `concurrency`: ~12 rounds of requests, in steps of 20, at most 200."""
    return min(MAX_PAGES, 20 * math.ceil(ROUNDS * concurrency / 20))


class Bench:
    def __init__(self, root: Path, sim: Simulator, concurrencies: tuple[int, ...]):
        from medkg_pdf import storage_keys
        from medkg_pdf.defs.documents import page_images_and_parses, source_pdf
        from medkg_pdf.resources.storage import LocalStorage
        from medkg_pdf.schemas import PageImages

        self.sim = sim
        self.instance = open_instance(instance_home(root))
        self.storage = LocalStorage(root=str(root / "data"))
        sizes = sorted({pages_for(c) for c in (*concurrencies, HEADLINE_CONCURRENCY)})
        paths = write_pdfs(root / "pdfs", sizes)
        self.doc_of: dict[int, str] = {}  # pages -> document id
        self.pngs: dict[str, list[bytes]] = {}
        for pages, doc in zip(sizes, register_paths(self.storage, self.instance, paths)):
            # render once, one run per document; the measured runs reuse these page images
            materialize([source_pdf, page_images_and_parses], self.instance,
                        {"storage": self.storage, "inbox_s3": unused_s3(), "vllm": unused_vllm()},
                        partition_key=doc, selection=["source_pdf", "page_images"])  # fmt: skip
            manifest = self.storage.read_model(storage_keys.page_images(doc), PageImages)
            assert len(manifest.pages) == pages and not any(image.blank for image in manifest.pages)
            self.pngs[doc] = [self.storage.read_bytes(image.key) for image in manifest.pages]
            self.doc_of[pages] = doc
        self.runs = 0

    def doc_for(self, concurrency: int) -> str:
        return self.doc_of[pages_for(concurrency)]

    def pipeline(self, doc: str, concurrency: int) -> dict:
        from medkg_pdf.defs.documents import page_images_and_parses
        from medkg_pdf.resources.vllm import VLLMResource

        self.runs += 1  # a new prompt version per run: a new cache key, so every page is sent
        vllm = VLLMResource(base_url=self.sim.url, model=SIM.model, max_concurrency=concurrency,
                            prompt_version=f"bench-{self.runs}")  # fmt: skip
        pages = len(self.pngs[doc])
        before = self.sim.reset()
        started = time.perf_counter()
        result = materialize([page_images_and_parses], self.instance, {"storage": self.storage, "vllm": vllm},
                             partition_key=doc, selection=["vlm_page_parses"])  # fmt: skip
        wall = time.perf_counter() - started
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert materialized == {"vlm_page_parses"}, materialized  # the stored page images were reused
        sim = stats_delta(before, self.sim.stats())
        assert sim["completed"] == pages, (sim, pages)
        times = step_times(self.instance, result.run_id)[PAGES_STEP]
        step = times["end"] - times["start"]
        body = times["last_output"] - times["start"]
        after = self.sim.stats()
        clock = time.time() - time.monotonic()  # event log timestamps are wall clock, the simulator's monotonic
        pre = after["first_arrival"] + clock - times["start"]
        post = times["end"] - (after["last_completion"] + clock)
        return {"pages": pages, "step_s": step, "body_s": body, "run_s": wall, "body_pps": pages / body,
                "step_pps": pages / step, "run_pps": pages / wall, "events_s": step - body,
                "window_pps": pages / sim["window_s"], "pre_s": pre, "post_s": post, "sim": sim}  # fmt: skip

    def bare(self, doc: str, concurrency: int) -> dict:
        from medkg_pdf.resources.vllm import VLLMResource

        prompt = VLLMResource(base_url=self.sim.url, model=SIM.model).effective_prompt
        pngs = self.pngs[doc]
        before = self.sim.reset()
        seconds = bare_client(self.sim.url, SIM.model, prompt, pngs, concurrency)
        sim = stats_delta(before, self.sim.stats())
        return {"pages": len(pngs), "s": seconds, "pps": len(pngs) / seconds, "window_pps": len(pngs) / sim["window_s"], "sim": sim}


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [p["c"] for p in points]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    model = [min(c, SIM.max_num_seqs) / (SIM.mean_tokens * SIM.step_s(min(c, SIM.max_num_seqs))) for c in cs]
    ax.plot(cs, model, ":", color="gray", label="simulator model (no client cost)")
    ax.axhline(SIM.ideal_rps, color="black", linewidth=0.8, label=f"ideal at full batch ({SIM.ideal_rps:.1f}/s)")
    ax.axvline(SIM.max_num_seqs, color="tab:red", linewidth=0.8, linestyle="--", label=f"max_num_seqs = {SIM.max_num_seqs}")
    ax.plot(cs, [p["bare"]["pps"] for p in points], "o-", label="bare httpx client")
    ax.plot(cs, [p["pipe"]["body_pps"] for p in points], "s-", label="vlm_page_parses alone (step function, images reused)")
    ax.plot(cs, [p["pipe"]["run_pps"] for p in points], "^--", label="its whole materialize() run (one document)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs)
    ax.set_xticklabels([str(c) for c in cs])
    ax.set_xlabel("requests in flight (VLLMResource.max_concurrency)")
    ax.set_ylabel("pages / s")
    ax.set_title("Parse step throughput vs client concurrency (vLLM simulator, continuous batching)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(quick: bool = False) -> Section:
    section = Section("Throughput (step-level): the vlm_page_parses step vs a bare client vs the simulator's ideal")
    root = fresh_dir("throughput")
    concurrencies = (1, 8, 16, 24) if quick else CONCURRENCIES
    with Simulator(SIM) as sim:
        bench = Bench(root, sim, concurrencies)
        points = []
        for c in concurrencies:
            doc = bench.doc_for(c)
            pipe, bare = bench.pipeline(doc, c), bench.bare(doc, c)
            points.append({"c": c, "pipe": pipe, "bare": bare})
        headline = {"pipe": [], "bare": []}
        for point in points:  # the sweep's own sample at the headline concurrency counts
            if point["c"] == HEADLINE_CONCURRENCY:
                headline["pipe"].append(point["pipe"])
                headline["bare"].append(point["bare"])
        for rep in range(0 if quick else HEADLINE_REPEATS):
            first_bare = rep % 2 == 0  # the sweep sample ran pipeline first
            for side in (("bare", "pipe") if first_bare else ("pipe", "bare")):
                doc = bench.doc_for(HEADLINE_CONCURRENCY)
                if side == "pipe":
                    headline["pipe"].append(bench.pipeline(doc, HEADLINE_CONCURRENCY))
                else:
                    headline["bare"].append(bench.bare(doc, HEADLINE_CONCURRENCY))
    hp, hb = headline["pipe"], headline["bare"]
    pipe_pps = median([m["body_pps"] for m in hp])
    step_pps = median([m["step_pps"] for m in hp])
    bare_pps = median([m["pps"] for m in hb])
    window_ratio = median([m["window_pps"] for m in hp]) / median([m["window_pps"] for m in hb])
    run_pps = median([m["run_pps"] for m in hp])
    pre, post = median([m["pre_s"] for m in hp]), median([m["post_s"] for m in hp])
    n = len(hp)
    pages = pages_for(HEADLINE_CONCURRENCY)
    section.add(f"step-level: vlm_page_parses step / bare client (1 document of {pages} pages, concurrency "
                f"{HEADLINE_CONCURRENCY}, median of {n})", pipe_pps / bare_pps, "", 0.95, gating=True,
                note=f"{pipe_pps:.2f} vs {bare_pps:.2f} pages/s; {PAGES_STEP} with only vlm_page_parses selected (stored "
                     "page images reused, no rendering), STEP_START to STEP_OUTPUT; not the whole pipeline (see end_to_end)")  # fmt: skip
    section.add(f"step-level: vlm_page_parses step / simulator ideal ({SIM.ideal_rps:.2f} pages/s)", pipe_pps / SIM.ideal_rps, "", 0.90,
                gating=True, note=f"server mean batch {median([m['sim']['mean_batch'] for m in hp]):.1f} of {SIM.max_num_seqs}")
    events = median([m["events_s"] for m in hp])
    section.add("step-level: whole step incl. Dagster's output and materialization events / bare client", step_pps / bare_pps,
                "", 0.95, kind="ratio, not gating",
                note=f"{step_pps:.2f} pages/s; Dagster's event writes after the asset returned: {events:.2f} s "
                     "(SQLite instance; see overhead)")  # fmt: skip
    section.add("parse phase, server's view (1st request to last answer): pipeline / bare", window_ratio,
                note="the client path alone: load PNG, encode, retry/breaker, store each result")
    section.add("fixed cost of the step before the 1st request / after the last answer", pre + post, "s",
                note=f"{pre:.2f} s + {post:.2f} s: manifest, cache lookups, client and preflight; the document's record, Dagster's events")
    section.add("bare client / simulator ideal", bare_pps / SIM.ideal_rps, note="what any client gets on a finite workload")
    section.add("whole materialize() run of the step (one document) / bare client", run_pps / bare_pps,
                note=f"{run_pps:.2f} pages/s incl. run start/end (fixed cost, see overhead)")  # fmt: skip
    plot(points, BENCH_DIR / PLOT)
    section.plots.append(PLOT)
    rows = []
    for p in points:
        model = min(p["c"], SIM.max_num_seqs) / (SIM.mean_tokens * SIM.step_s(min(p["c"], SIM.max_num_seqs)))
        rows.append([p["c"], p["pipe"]["pages"], model, p["bare"]["pps"], p["pipe"]["body_pps"], p["pipe"]["step_pps"],
                     p["pipe"]["run_pps"], p["pipe"]["body_pps"] / p["bare"]["pps"], p["pipe"]["window_pps"] / p["bare"]["window_pps"],
                     p["pipe"]["sim"]["mean_batch"], p["bare"]["sim"]["mean_batch"]])  # fmt: skip
    section.body.append(
        f"Simulator: max_num_seqs {SIM.max_num_seqs}, step {SIM.step_base_s * 1e3:g} ms + {SIM.step_per_seq_s * 1e3:g} ms/seq, "
        f"{SIM.tokens} tokens per page -> ideal {SIM.ideal_rps:.2f} pages/s at a full batch "
        f"(= {SIM.max_num_seqs} / ({SIM.tokens} x {SIM.step_s(SIM.max_num_seqs) * 1e3:g} ms)); a real 7B VLM on one GPU "
        "is ~20-50x slower per page, so fixed per-run and per-step costs weigh ~20-50x more here than in production. "
        "Workload: one run per document (the package refuses multi-partition runs), each selecting only "
        f"`vlm_page_parses`: the `{PAGES_STEP}` step reusing the page images rendered beforehand, so rendering is "
        "not timed. Step-level figures: the whole process is `end_to_end`. Sweep: one sample per point, one document "
        f"of ~{ROUNDS} pages per request slot (20 to {MAX_PAGES} pages; {MAX_PAGES} from 16 up)."
    )
    section.body.append(table(
        ["concurrency", "pages (1 document)", "model pages/s", "bare pages/s", "asset pages/s", "step pages/s", "run pages/s",
         "asset/bare", "parse phase/bare", "server mean batch (pipeline)", "server mean batch (bare)"], rows))  # fmt: skip
    section.body.append(
        f"Headline samples at concurrency {HEADLINE_CONCURRENCY} (pages/s): vlm_page_parses step (asset function) "
        + ", ".join(f"{m['body_pps']:.2f}" for m in hp)
        + "; bare " + ", ".join(f"{m['pps']:.2f}" for m in hb) + "."
    )
    section.data = {"points": points, "headline": headline}  # type: ignore[attr-defined]
    return section


if __name__ == "__main__":
    result = run()
    for figure in result.figures:
        print(figure.row())
    print("\n\n".join(result.body))
