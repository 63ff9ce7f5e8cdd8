"""How much memory does `medkg-pdf run` need? Peak PSS of the whole process tree, by workers and document length.

For sizing a machine (or a run pod): each row is one whole `medkg-pdf run PDF... --workers W
--pages-in-flight P --json` process with a fresh data dir, over max(2, W) distinct PDFs of
`pages` pages each (50, 200 and 1 000 pages; distinct text per document, so no page image or
answer is shared), against the simulated vLLM server (a separate process, not counted) that
answers every page with ~2 KB of markdown, like a dense medical page. While it runs, the whole
process tree (the CLI, its render helpers and their forkserver) is sampled every 0.2 s from
/proc/<pid>/smaps_rollup: the figure is the peak of the summed PSS (shared pages split between the
processes sharing them, what the tree really costs a machine or a cgroup).

Memory should follow the work in flight (workers, pages in flight), not the length of the
documents: the gating figure is the peak with 200-page documents over the peak with 50-page ones,
at the same workers and pages in flight (goal <= 1.25x). The 1 000-page rows show the same holds
for long documents. Each row's exact command is printed beside it, to re-run by hand.

The `--workers 1 --pages-in-flight 8` rows are one run as a daemon's run pod does it (one document
per process, `MEDKG_VLLM_MAX_CONCURRENCY` 8 pages in flight): deploy/ sizes the run pods from them.

`python -m bench.memory_cli [--quick] [--workers 1 8] [--pages 50 200 1000]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, Section, cores, fresh_dir, table, write_pdfs
from bench.memory import tree_memory
from bench.simulator import SimParams, Simulator

# ~2 KB of markdown per page (a dense page of a discharge letter); fast steps so the CPU goes to the client
ANSWER = "# Discharge summary\n\n" + "\n".join(
    f"- Line {i:02d}: amoxicillin 500 mg every 8 h, creatinine 1.3 mg/dL, eGFR 54, INR 2.4" for i in range(25)
)
SIM = SimParams(max_num_seqs=64, step_base_s=0.002, step_per_seq_s=0.0, tokens=8, answer=ANSWER)
PAGES = (50, 200, 1000)
WORKERS = (1, 8)
IN_FLIGHT = 32  # pages in flight with several workers (the figure); one worker: 8, as one run pod
ONE_RUN_IN_FLIGHT = 8
GOAL_RATIO = 1.25
GOAL_MB = 1024
MB = 2**20


def command(pdfs: list[Path], data_dir: Path, workers: int, in_flight: int, render: int | None = None) -> list[str]:
    extra = [] if render is None else ["--render-processes", str(render)]
    return [str(Path(sys.executable).with_name("medkg-pdf")), "run", *map(str, pdfs), "--data-dir", str(data_dir),
            "--workers", str(workers), "--pages-in-flight", str(in_flight), *extra, "--json"]  # fmt: skip


def measure(argv: list[str], sim: Simulator, pages: int, interval_s: float = 0.2) -> dict:
    """One whole process; its tree's peak PSS (and when it happened), seconds, and whether every page came back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDKG_") and k != "DAGSTER_HOME"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               MEDKG_VLLM_BASE_URL=sim.url, MEDKG_VLLM_MODEL=sim.params.model)  # fmt: skip
    sim.reset()
    peak = {"pss": 0, "at": 0.0, "processes": 0}
    stop = threading.Event()
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while not stop.is_set():
            pss, _, processes = tree_memory(child.pid)
            if pss > peak["pss"]:
                peak.update(pss=pss, at=time.perf_counter() - started)
            peak["processes"] = max(peak["processes"], processes)
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or sum(r["pages_ok"] for r in results) < pages:
        raise RuntimeError(f"void: exit {child.returncode}, {sum(r['pages_ok'] for r in results)} of {pages} pages ok\n"
                           f"{out[-1500:]}\n{err[-1500:]}")  # fmt: skip
    return {"peak_pss": peak["pss"], "peak_at_s": peak["at"], "processes": peak["processes"], "seconds": seconds}


def run(quick: bool = False, workers: tuple[int, ...] = WORKERS, pages: tuple[int, ...] = PAGES,
        in_flight: int = IN_FLIGHT) -> Section:  # fmt: skip
    section = Section("Memory of `medkg-pdf run`: whole process tree, by workers and document length")
    if quick:
        workers, pages = (4,), (50, 200)
    root = fresh_dir("memory_cli")
    # (workers, pages in flight, --render-processes); each worker gets a document and at least two go
    # one after another (what is held across documents shows); the most workers once more without helpers
    top = max(workers)
    configs = [(w, ONE_RUN_IN_FLIGHT if w == 1 else in_flight, None) for w in workers]
    if top > 1 and any(n >= 64 for n in pages):
        configs.append((top, in_flight, 1))
    count = {w: max(2, w) for w in workers}
    pdfs = {n: write_pdfs(root / f"pdf-{n}", [n] * max(count.values()), prefix=f"p{n}") for n in pages}
    results: dict[tuple, dict] = {}
    argvs: dict[tuple, list[str]] = {}
    with Simulator(SIM) as sim:
        for w, flight, render in configs:
            for n in pages:
                if render is not None and n != sorted(pages)[min(1, len(pages) - 1)]:
                    continue  # without helpers: the second length only (below 64 pages no document has helpers)
                documents = count[w]
                argv = command(pdfs[n][:documents], root / f"data-{n}-{w}-{render}", w, flight, render)
                results[(w, flight, render, n)] = r = measure(argv, sim, n * documents)
                argvs[(w, flight, render, n)] = argv
                print(f"  {documents} x {n} pages, --workers {w} --pages-in-flight {flight}"
                      f"{'' if render is None else f' --render-processes {render}'}: peak PSS {r['peak_pss'] / MB:.0f} MB "
                      f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip

    def peak(w, render, n):
        flight = ONE_RUN_IN_FLIGHT if w == 1 else in_flight
        r = results.get((w, flight, render, n))
        if r is None and render is not None:
            r = results.get((w, flight, None, n))  # a short document: no helpers either way
        return r["peak_pss"] if r else None

    ordered = sorted(pages)
    small, mid, big = ordered[0], ordered[min(1, len(ordered) - 1)], ordered[-1]
    d = count[top]
    if big != mid:
        section.add(f"peak PSS, {d} x {big} / {d} x {mid} pages, --workers {top} (length alone: both have render helpers)",
                    peak(top, None, big) / peak(top, None, mid), "x", GOAL_RATIO, op="<=", gating=True,
                    note=f"{peak(top, None, mid) / MB:.0f} -> {peak(top, None, big) / MB:.0f} MB")  # fmt: skip
    if mid != small:
        section.add(f"peak PSS, {d} x {mid} / {d} x {small} pages, --workers {top} (the issue's goal)",
                    peak(top, None, mid) / peak(top, None, small), "x", GOAL_RATIO, op="<=", gating=True, note="includes the render helper processes (forkserver + 1 helper on 2 cores) "
                    f"that only documents of 64+ pages start: {peak(top, None, small) / MB:.0f} -> {peak(top, None, mid) / MB:.0f} MB")  # fmt: skip
        if (top, in_flight, 1, mid) in results:
            section.add("the same with --render-processes 1 (no helper processes)", peak(top, 1, mid) / peak(top, None, small),
                        "x", GOAL_RATIO, op="<=", note=f"{peak(top, None, small) / MB:.0f} -> {peak(top, 1, mid) / MB:.0f} MB; "
                        f"{results[(top, in_flight, 1, mid)]['seconds']:.0f} s vs {results[(top, in_flight, None, mid)]['seconds']:.0f} s with helpers")  # fmt: skip
    for n in pages:
        section.add(f"peak PSS of the process tree, --workers {top}, {d} x {n} pages", peak(top, None, n) / MB, "MB", GOAL_MB, op="<")
    if 1 in workers:
        section.add(f"one run as a run pod does it (--workers 1 --pages-in-flight {ONE_RUN_IN_FLIGHT}), {big}-page documents",
                    peak(1, None, big) / MB, "MB", note="deploy/ sizes the run pods from this")  # fmt: skip
    rows, commands = [], []
    for key in sorted(results, key=lambda k: (k[0], k[2] or 0, k[3])):
        w, flight, render, n = key
        r = results[key]
        rows.append([w, flight, "one per core" if render is None else render, count[w], n, r["peak_pss"] / MB,
                     r["peak_at_s"], r["processes"], r["seconds"]])  # fmt: skip
        argv = argvs[key]
        commands.append(" ".join([Path(argv[0]).name, argv[1], f"<{count[w]} x {n}-page PDFs>", *argv[2 + count[w]:]]))
    section.body.append(
        f"Each row one whole `medkg-pdf run` process over max(2, workers) distinct PDFs, fresh data dir, against the "
        f"simulator (max_num_seqs {SIM.max_num_seqs}, {SIM.step_base_s * 1e3:g} ms steps, {SIM.tokens} tokens, "
        f"{len(ANSWER)}-character answers). Peak PSS: the sum over the process tree (CLI, render helpers, forkserver), "
        f"sampled every 0.2 s from /proc/<pid>/smaps_rollup. Machine: {cores()} cores."
    )
    section.body.append(table(["--workers", "--pages-in-flight", "render processes", "documents", "pages per document",
                               "peak PSS MB", "peak at s", "processes (max)", "seconds"], rows))  # fmt: skip
    section.body.append("The commands (environment: `MEDKG_VLLM_BASE_URL=<simulator> MEDKG_VLLM_MODEL="
                        f"{SIM.model}`):\n\n```\n" + "\n".join(commands) + "\n```")  # fmt: skip
    section.data = {"/".join(map(str, k)): r for k, r in results.items()}  # type: ignore[attr-defined]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--workers 4, 50 and 200 pages")
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument("--pages", type=int, nargs="+", default=list(PAGES))
    parser.add_argument("--pages-in-flight", type=int, default=IN_FLIGHT)
    args = parser.parse_args(argv)
    section = run(quick=args.quick, workers=tuple(args.workers), pages=tuple(args.pages), in_flight=args.pages_in_flight)
    section.print()
    return 1 if any(f.gating and f.passed is False for f in section.figures) else 0


if __name__ == "__main__":
    sys.exit(main())
