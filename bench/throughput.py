"""Does the pipeline keep a vLLM server saturated? `vlm_page_parses` versus a bare httpx client.

Workload: 10 PDFs of 20 pages (`pdf_factory.text_pdf`, 200 pages, distinct per document: one
backfill run as `document_backfill_policy` cuts it, 10 partitions per run) registered as `documents` partitions; `source_pdf` and `page_images` are materialized
once, then `vlm_page_parses` is materialized again and again through `dagster.materialize` over a
partition range (one run, every page of every document in flight together, as a backfill run does)
against the simulator: the real asset, resource, retries, breaker and storage writes. Each run uses
a new `prompt_version`, so no page comes from the cache.

Baseline, in the same process and run of this script: a minimal httpx.AsyncClient posting the same
PNGs (read into memory beforehand, base64-encoded per request like the pipeline does) to the same
simulator with the same concurrency. Pipeline throughput is pages / duration of the
`vlm_page_parses` step (STEP_START to STEP_SUCCESS in the event log: manifest and cache reads,
every request, every stored result and the per-document records); the whole `materialize` call
(run start, resource setup, run end) is reported next to it. Repetitions alternate which side goes
first, and medians are compared.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    Section,
    fresh_dir,
    instance_home,
    materialize,
    median,
    open_instance,
    range_tags,
    register_paths,
    step_times,
    table,
    unused_s3,
    write_pdfs,
)
from bench.simulator import SimParams, Simulator, stats_delta

SIM = SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=50)
PAGE_COUNTS = [20] * 10  # one backfill run as the BackfillPolicy cuts it: 10 documents, here 200 pages
CONCURRENCIES = (1, 4, 8, 16, 24, 32)
HEADLINE_CONCURRENCY = 24  # 1.5 x max_num_seqs: see the sweep
HEADLINE_REPEATS = 2  # plus the sweep's own sample at that concurrency: 3 samples a side
PLOT = "throughput_vs_concurrency.png"


def bare_body(model: str, prompt: str, png: bytes) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}},
            {"type": "text", "text": prompt},
        ]}],
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


class Bench:
    def __init__(self, root: Path, sim: Simulator):
        from medkg_pdf import layout
        from medkg_pdf.assets import page_images, source_pdf
        from medkg_pdf.resources.storage import LocalStorage
        from medkg_pdf.schemas import PageImages

        self.sim = sim
        self.instance = open_instance(instance_home(root))
        self.storage = LocalStorage(root=str(root / "data"))
        paths = write_pdfs(root / "pdfs", PAGE_COUNTS)
        self.ids = register_paths(self.storage, self.instance, paths)
        materialize([source_pdf, page_images], self.instance, {"storage": self.storage, "inbox_s3": unused_s3()},
                    tags=range_tags(self.ids))  # fmt: skip
        self.pngs: dict[str, list[bytes]] = {}
        for doc in self.ids:
            manifest = self.storage.read_model(layout.page_images(doc), PageImages)
            assert not any(image.blank for image in manifest.pages)
            self.pngs[doc] = [self.storage.read_bytes(image.key) for image in manifest.pages]
        self.runs = 0

    def docs_for(self, concurrency: int) -> list[str]:
        """Enough documents for ~12 rounds of `concurrency` pages (all 200 pages from 16 up)."""
        return self.ids[: min(len(self.ids), math.ceil(12 * concurrency / PAGE_COUNTS[0]))]

    def pipeline(self, docs: list[str], concurrency: int) -> dict:
        from medkg_pdf.assets import vlm_page_parses
        from medkg_pdf.resources.vllm import VLLMResource

        self.runs += 1  # a new prompt version per run: a new cache key, so every page is sent
        vllm = VLLMResource(base_url=self.sim.url, model=SIM.model, max_concurrency=concurrency,
                            prompt_version=f"bench-{self.runs}")  # fmt: skip
        pages = sum(len(self.pngs[d]) for d in docs)
        before = self.sim.reset()
        started = time.perf_counter()
        result = materialize([vlm_page_parses], self.instance, {"storage": self.storage, "vllm": vllm},
                             tags=range_tags(docs) if len(docs) > 1 else None,
                             partition_key=docs[0] if len(docs) == 1 else None)  # fmt: skip
        wall = time.perf_counter() - started
        sim = stats_delta(before, self.sim.stats())
        assert sim["completed"] == pages, (sim, pages)
        times = step_times(self.instance, result.run_id)["vlm_page_parses"]
        step = times["end"] - times["start"]
        body = times["output"] - times["start"]
        after = self.sim.stats()
        clock = time.time() - time.monotonic()  # event log timestamps are wall clock, the simulator's monotonic
        pre = after["first_arrival"] + clock - times["start"]
        post = times["end"] - (after["last_completion"] + clock)
        return {"pages": pages, "step_s": step, "body_s": body, "run_s": wall, "body_pps": pages / body,
                "step_pps": pages / step, "run_pps": pages / wall, "events_s": step - body,
                "window_pps": pages / sim["window_s"], "pre_s": pre, "post_s": post, "sim": sim}  # fmt: skip

    def bare(self, docs: list[str], concurrency: int) -> dict:
        from medkg_pdf.resources.vllm import VLLMResource

        prompt = VLLMResource(base_url=self.sim.url, model=SIM.model).effective_prompt
        pngs = [png for d in docs for png in self.pngs[d]]
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
    ax.plot(cs, [p["pipe"]["body_pps"] for p in points], "s-", label="vlm_page_parses (asset function)")
    ax.plot(cs, [p["pipe"]["run_pps"] for p in points], "^--", label="whole materialize() run")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs)
    ax.set_xticklabels([str(c) for c in cs])
    ax.set_xlabel("requests in flight (VLLMResource.max_concurrency)")
    ax.set_ylabel("pages / s")
    ax.set_title("Throughput vs client concurrency (vLLM simulator, continuous batching)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(quick: bool = False) -> Section:
    section = Section("Throughput: vlm_page_parses vs a bare client vs the simulator's ideal")
    root = fresh_dir("throughput")
    concurrencies = (1, 8, 16, 24) if quick else CONCURRENCIES
    with Simulator(SIM) as sim:
        bench = Bench(root, sim)
        points = []
        for c in concurrencies:
            docs = bench.docs_for(c)
            pipe, bare = bench.pipeline(docs, c), bench.bare(docs, c)
            points.append({"c": c, "pipe": pipe, "bare": bare})
        headline = {"pipe": [], "bare": []}
        for point in points:  # the sweep's own sample at the headline concurrency counts
            if point["c"] == HEADLINE_CONCURRENCY:
                headline["pipe"].append(point["pipe"])
                headline["bare"].append(point["bare"])
        for rep in range(0 if quick else HEADLINE_REPEATS):
            first_bare = rep % 2 == 0  # the sweep sample ran pipeline first
            for side in (("bare", "pipe") if first_bare else ("pipe", "bare")):
                if side == "pipe":
                    headline["pipe"].append(bench.pipeline(bench.ids, HEADLINE_CONCURRENCY))
                else:
                    headline["bare"].append(bench.bare(bench.ids, HEADLINE_CONCURRENCY))
    hp, hb = headline["pipe"], headline["bare"]
    pipe_pps = median([m["body_pps"] for m in hp])
    step_pps = median([m["step_pps"] for m in hp])
    bare_pps = median([m["pps"] for m in hb])
    window_ratio = median([m["window_pps"] for m in hp]) / median([m["window_pps"] for m in hb])
    run_pps = median([m["run_pps"] for m in hp])
    pre, post = median([m["pre_s"] for m in hp]), median([m["post_s"] for m in hp])
    n = len(hp)
    section.add(f"vlm_page_parses / bare client (200 pages, concurrency {HEADLINE_CONCURRENCY}, median of {n})",
                pipe_pps / bare_pps, "", 0.95, gating=True,
                note=f"{pipe_pps:.2f} vs {bare_pps:.2f} pages/s; asset function: STEP_START to STEP_OUTPUT")  # fmt: skip
    section.add(f"vlm_page_parses / simulator ideal ({SIM.ideal_rps:.2f} pages/s)", pipe_pps / SIM.ideal_rps, "", 0.90,
                gating=True, note=f"server mean batch {median([m['sim']['mean_batch'] for m in hp]):.1f} of {SIM.max_num_seqs}")
    events = median([m["events_s"] for m in hp])
    section.add("whole step incl. Dagster's 10 per-partition events / bare client", step_pps / bare_pps, "", 0.95,
                kind="ratio, not gating",
                note=f"{step_pps:.2f} pages/s; Dagster's event writes after the asset returned: {events:.2f} s "
                     "(SQLite instance; see overhead)")  # fmt: skip
    section.add("parse phase, server's view (1st request to last answer): pipeline / bare", window_ratio,
                note="the client path alone: load PNG, encode, retry/breaker, store each result")
    section.add("fixed cost of the step before the 1st request / after the last answer", pre + post, "s",
                note=f"{pre:.2f} s + {post:.2f} s: manifests, cache lookups, client and preflight; per-document records, Dagster's events")
    section.add("bare client / simulator ideal", bare_pps / SIM.ideal_rps, note="what any client gets on a finite workload")
    section.add("whole materialize() run / bare client", run_pps / bare_pps,
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
        "Workload: 10 PDFs x 20 pages in one multi-partition run (a backfill run of 10 partitions). "
        "Sweep: one sample per point, ~12 pages per request slot (all 200 pages from 16 up)."
    )
    section.body.append(table(
        ["concurrency", "pages", "model pages/s", "bare pages/s", "asset pages/s", "step pages/s", "run pages/s",
         "asset/bare", "parse phase/bare", "server mean batch (pipeline)", "server mean batch (bare)"], rows))  # fmt: skip
    section.body.append(
        f"Headline samples at concurrency {HEADLINE_CONCURRENCY} (pages/s): vlm_page_parses asset "
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
