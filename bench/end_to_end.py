"""Does `medkg-pdf run` keep a vLLM server as busy as a bare client, from process start to process exit?

Workload: 4 distinct 50-page PDFs (200 pages), 32 pages in flight on the server. Two whole
processes, one each, against the same simulator (a separate process; continuous batching,
max_num_seqs 16, step 10 ms + 0.5 ms/seq) in two regimes: **slow** (200 tokens a page, ideal
4.44 pages/s) and **fast** (100 tokens, 8.89 pages/s):

* **bare client** (`python -m bench.bare_client`, the baseline): PyMuPDF renders pages at 150 DPI in
  a thread, streaming into a bounded queue, while httpx posts them with 32 in flight; nothing else.
  One render thread holds the GIL while it encodes a PNG, so on a slow CPU the baseline itself can
  fall short of the ideal in the fast regime: the "/ ideal" column shows it.
* **medkg-pdf**: `medkg-pdf run PDF... --workers 4 --pages-in-flight 32 --json` with a fresh empty
  data dir (no page cache hit) and its own Dagster instance under it: the whole chain per document.

Each side is timed from spawn to exit (`time.perf_counter()` around the child process: interpreter
start, imports, rendering, every request, every write, shutdown). A repetition is void unless the
process exits 0 and the simulator answered every page. Repetitions alternate which side goes first;
the figure is the ratio of the median seconds (bare / medkg-pdf = medkg-pdf's throughput relative to
the bare client's), goal >= 0.97. Both sides run once, untimed, on a 2-page PDF first, so the OS
file cache holds both sides' code. From the simulator's `first_arrival` / `last_completion` (system
monotonic clock, comparable across processes): start-up (spawn to first request on the server),
tail (last answer to exit) and the server-side rate in between. Peak memory: PSS of the process
tree, polled from /proc every 0.2 s.

`python -m bench.end_to_end [--quick | --reps N] [--workers W] [--regimes slow fast]`
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

from bench.common import REPO, Section, fresh_dir, median, table, write_pdfs
from bench.memory import tree_memory
from bench.simulator import SimParams, Simulator

REGIMES = {
    "slow": SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=200),
    "fast": SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=100),
}
PAGE_COUNTS = [50] * 4
IN_FLIGHT = 32
WORKERS = 4
REPS = 3
GOAL = 0.97
MB = 2**20


def commands(sim: Simulator, pdfs: list[Path], data_dir: Path, workers: int) -> dict[str, tuple[list[str], dict]]:
    """The two sides: argv and environment (no MEDKG_* or DAGSTER_HOME of the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDKG_") and k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    files = [str(p) for p in pdfs]
    bare = [sys.executable, "-m", "bench.bare_client", "--url", sim.url, "--model", sim.params.model,
            "--in-flight", str(IN_FLIGHT), *files]  # fmt: skip
    medkg = [str(Path(sys.executable).with_name("medkg-pdf")), "run", *files, "--data-dir", str(data_dir),
             "--workers", str(workers), "--pages-in-flight", str(IN_FLIGHT), "--json"]  # fmt: skip
    medkg_env = dict(env, MEDKG_VLLM_BASE_URL=sim.url, MEDKG_VLLM_MODEL=sim.params.model, MEDKG_DATA_DIR=str(data_dir))
    return {"bare": (bare, env), "medkg": (medkg, medkg_env)}


def timed(argv: list[str], env: dict, sim: Simulator, pages: int) -> dict:
    """One whole process against a freshly reset simulator: seconds from spawn to exit, and the server's view."""
    sim.reset()
    peak = [0]
    stop = threading.Event()
    spawned = time.monotonic()
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_memory(child.pid)[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    exited = time.monotonic()
    stop.set()
    sampler.join()
    stats = sim.stats()
    if child.returncode != 0 or stats["completed"] < pages:
        raise RuntimeError(f"void: {' '.join(argv[:3])} exited {child.returncode}, the simulator answered "
                           f"{stats['completed']} of {pages} pages\n{out[-1500:]}\n{err[-1500:]}")  # fmt: skip
    window = stats["last_completion"] - stats["first_arrival"]
    return {"s": seconds, "pps": pages / seconds, "startup_s": stats["first_arrival"] - spawned,
            "tail_s": exited - stats["last_completion"], "window_pps": pages / window, "calls": stats["completed"],
            "mean_batch": stats["mean_batch"], "peak_pss": peak[0], "stdout": out}  # fmt: skip


def run(quick: bool = False, reps: int | None = None, workers: int = WORKERS,
        regimes: list[str] | None = None) -> Section:
    reps = reps or (1 if quick else REPS)
    regimes = regimes or list(REGIMES)
    section = Section("End to end: `medkg-pdf run` vs a bare client, whole processes")
    root = fresh_dir("end_to_end")
    pdfs = write_pdfs(root / "pdfs", PAGE_COUNTS)
    warmup = write_pdfs(root / "warmup", [2], prefix="warmup")
    pages = sum(PAGE_COUNTS)
    rows, samples = [], {}
    for index, name in enumerate(regimes):
        params = REGIMES[name]
        with Simulator(params) as sim:
            if index == 0:
                for argv, env in commands(sim, warmup, fresh_dir("end_to_end/data"), workers).values():
                    timed(argv, env, sim, 2)
            runs: dict[str, list[dict]] = {"bare": [], "medkg": []}
            for rep in range(reps):
                for side in ("bare", "medkg") if rep % 2 == 0 else ("medkg", "bare"):
                    argv, env = commands(sim, pdfs, fresh_dir("end_to_end/data"), workers)[side]
                    result = timed(argv, env, sim, pages)
                    runs[side].append(result)
                    print(f"  {name} rep {rep + 1}/{reps} {side:5}: {result['s']:6.2f} s, {result['pps']:.2f} pages/s, "
                          f"first request after {result['startup_s']:.2f} s", flush=True)  # fmt: skip
        samples[name] = runs
        b, m = ({k: median([r[k] for r in runs[side]]) for k in runs[side][0] if k != "stdout"}
                for side in ("bare", "medkg"))  # fmt: skip
        ratio = b["s"] / m["s"]
        pairwise = [rb["s"] / rm["s"] for rb, rm in zip(runs["bare"], runs["medkg"])]
        ideal = params.ideal_rps
        section.add(f"medkg-pdf run / bare client, whole process ({name}: {params.tokens} tokens, "
                    f"ideal {ideal:.2f} pages/s, median of {reps})", ratio, "", GOAL, gating=True,
                    note=f"{m['s']:.1f} vs {b['s']:.1f} s; first request after {m['startup_s']:.1f} vs "
                         f"{b['startup_s']:.1f} s; pairwise {', '.join(f'{p:.3f}' for p in pairwise)}")  # fmt: skip
        section.add(f"medkg-pdf run / simulator ideal ({name})", m["pps"] / ideal,
                    note=f"bare client / ideal: {b['pps'] / ideal:.3f}")
        for label, r in (("bare client", b), ("medkg-pdf", m)):
            rows.append([name, label, r["s"], r["pps"], r["pps"] / ideal, r["startup_s"], r["tail_s"],
                         r["window_pps"], r["mean_batch"], r["peak_pss"] / MB])  # fmt: skip
    section.body.append(
        f"{len(PAGE_COUNTS)} PDFs x {PAGE_COUNTS[0]} pages, {IN_FLIGHT} pages in flight on both sides, medkg-pdf with "
        f"`--workers {workers} --pages-in-flight {IN_FLIGHT}`; medians of {reps} whole-process runs per side. "
        "Start-up: spawn to the first request on the server; tail: last answer to exit; server window: pages / "
        "(first request to last answer); mean batch: of max_num_seqs 16 over the engine's steps."
    )
    section.body.append(table(["regime", "side", "seconds", "pages/s", "/ ideal", "start-up s", "tail s",
                               "server window pages/s", "mean batch", "peak PSS MB"], rows))  # fmt: skip
    section.data = samples  # type: ignore[attr-defined]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help=f"repetitions per side and regime (default {REPS})")
    parser.add_argument("--quick", action="store_true", help="1 repetition")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"medkg-pdf --workers (default {WORKERS})")
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument("--json", metavar="FILE", help="also write every sample here")
    args = parser.parse_args(argv)
    section = run(quick=args.quick, reps=1 if args.quick else args.reps, workers=args.workers, regimes=args.regimes)
    print()
    for figure in section.figures:
        print(figure.row())
    print("\n" + "\n\n".join(section.body))
    print(f"\ngoal: medkg-pdf >= {GOAL} of the bare client's throughput, whole process")
    if args.json:
        Path(args.json).write_text(json.dumps(section.data, indent=1))
    return 1 if any(f.gating and f.passed is False for f in section.figures) else 0


if __name__ == "__main__":
    sys.exit(main())
