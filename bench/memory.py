"""Is memory flat in page count? Peak memory of rendering + parsing a 100- and a 1 000-page PDF.

Each size runs in a fresh child process (`python -m bench.memory --child ...`) that materializes,
in one run for its one document, `source_pdf` and the `page_images_and_parses` step (`page_images`
and `vlm_page_parses`: pages are rendered and sent to the server as they are rendered; default
render settings, and for the 100-page document also `workers=1`, the sequential path, to show what
the render helper processes cost) against a fast simulated server (2 tokens per page, 2 ms steps,
64 sequences) with 16 requests in flight. The PDF is generated beforehand by this process, so its
construction is not counted.

While the child runs, this process samples the child's whole process tree every 0.1 s from /proc
(the child, its render helpers and their forkserver; the simulator is a separate process, not
counted): the sum of PSS (proportional set size: shared pages split between the processes that
share them, what the tree really costs; the target applies to it) and the sum of RSS (shared
pages counted once per process: an upper bound). Each process's own peak RSS is read from
`VmHWM` in /proc/<pid>/status, which the kernel keeps per address space, so no peak between two
samples is missed. (`getrusage(...).ru_maxrss` is not used: on Linux it carries the parent's peak
across fork + exec, so a child of this ~450 MB benchmark process would report at least that.)
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

from bench.common import REPO, Section, fresh_dir, table, write_pdfs
from bench.simulator import SimParams, Simulator

SIZES = (100, 1000)
# (pages, page_images workers): the default (0: one process per core) for both sizes, and the
# sequential path (1) on the small one, to show what the render helpers cost
RUNS = ((100, 1), (100, 0), (1000, 0))
SIM = SimParams(max_num_seqs=64, step_base_s=0.002, step_per_seq_s=0.0, tokens=2)
CONCURRENCY = 16
MB = 2**20


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_memory(root: int, peaks: dict[int, int] | None = None) -> tuple[int, int, int]:
    """(sum of PSS, sum of RSS, processes) of `root` and its descendants, in bytes; `peaks` collects VmHWM per pid."""
    tree = _children()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(tree.get(pid, []))
    pss = rss = 0
    for pid in pids:
        if peaks is not None:
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
            except OSError:
                pass
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss, len(pids)


def measure(pdf: Path, workdir: Path, url: str, workers: int) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", str(pdf), str(workdir), url, str(workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss": 0, "rss": 0, "processes": 0}
    hwm: dict[int, int] = {}
    series: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pss, rss, processes = tree_memory(child.pid, hwm)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            peak["processes"] = max(peak["processes"], processes)
            series.append((time.perf_counter() - started, pss))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"memory child failed ({child.returncode}): {err[-2000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    hwm[child.pid] = max(hwm.get(child.pid, 0), report["self_hwm"])
    report.update(peak_pss=peak["pss"], peak_rss_sum=peak["rss"], processes=peak["processes"],
                  largest_hwm=max(hwm.values()), child_hwm=hwm[child.pid], seconds=time.perf_counter() - started)  # fmt: skip
    return report


def _hwm() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child_main(pdf: str, workdir: str, url: str, workers: str) -> None:
    """In the child: the real assets, one partition, then print the child's own figures as JSON."""
    import warnings

    warnings.filterwarnings("ignore")
    from bench.common import instance_home, materialize, open_instance, pages_config, register_paths, unused_s3
    from medkg_pdf.defs.documents import page_images_and_parses, source_pdf
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.resources.vllm import VLLMResource

    root = Path(workdir)
    instance = open_instance(instance_home(root))
    storage = LocalStorage(root=str(root / "data"))
    (doc,) = register_paths(storage, instance, [Path(pdf)])
    baseline = _hwm()
    vllm = VLLMResource(base_url=url, model=SIM.model, max_concurrency=CONCURRENCY)
    result = materialize([source_pdf, page_images_and_parses], instance,
                         {"storage": storage, "vllm": vllm, "inbox_s3": unused_s3()}, partition_key=doc,
                         run_config=pages_config(workers=int(workers)))  # fmt: skip
    meta = {
        e.event_specific_data.materialization.asset_key.path[-1]: e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    print(json.dumps({
        "pages": meta["page_images"]["pages"].value,
        "pages_ok": meta["vlm_page_parses"]["pages_ok"].value,
        "render_processes": meta["page_images"]["render_processes"].value,
        "self_hwm_before_run": baseline,
        "self_hwm": _hwm(),
    }))  # fmt: skip


def run(quick: bool = False) -> Section:
    section = Section("Memory: rendering + parsing, 100 vs 1 000 pages")
    root = fresh_dir("memory")
    runs = ((64, 1), (64, 0), (200, 0)) if quick else RUNS
    pdfs = {n: write_pdfs(root / f"pdf-{n}", [n], prefix=f"long{n}")[0] for n in {n for n, _ in runs}}
    reports = {}
    with Simulator(SIM) as sim:
        for n, workers in runs:
            reports[(n, workers)] = measure(pdfs[n], root / f"run-{n}-{workers}", sim.url, workers)
            assert reports[(n, workers)]["pages_ok"] == n, reports[(n, workers)]
    (n_small, _), (n_large, _) = runs[1], runs[2]
    sequential, small, large = reports[runs[0]], reports[runs[1]], reports[runs[2]]
    section.add(f"peak memory of the process tree (PSS), {n_large} pages", large["peak_pss"] / MB, "MB", 600, op="<",
                note=f"sum of RSS {large['peak_rss_sum'] / MB:.0f} MB (shared pages counted per process); "
                     f"largest single process peak (VmHWM) {large['largest_hwm'] / MB:.0f} MB")  # fmt: skip
    section.add(f"peak PSS growth, {n_large} / {n_small} pages", large["peak_pss"] / small["peak_pss"], "x", 1.25, op="<=",
                gating=True, note=f"{small['peak_pss'] / MB:.0f} MB -> {large['peak_pss'] / MB:.0f} MB for "
                                  f"{n_large // n_small}x the pages")  # fmt: skip
    section.add(f"memory of the render helpers ({n_small} pages: default vs workers=1)",
                (small["peak_pss"] - sequential["peak_pss"]) / MB, "MB",
                note=f"the forkserver and helper processes import the code location; sequential path: "
                     f"{sequential['peak_pss'] / MB:.0f} MB")  # fmt: skip
    rows = []
    for (n, workers), r in reports.items():
        rows.append([n, workers, r["render_processes"], r["processes"], r["peak_pss"] / MB, r["peak_rss_sum"] / MB,
                     r["child_hwm"] / MB, r["self_hwm_before_run"] / MB, r["largest_hwm"] / MB, r["seconds"]])  # fmt: skip
    section.body.append(
        f"Each size in a fresh child process: one run of `source_pdf` + `page_images_and_parses` (`page_images` and "
        f"`vlm_page_parses` in one step, pages sent as they are rendered) for one document, "
        f"simulated server ({SIM.tokens} tokens, {SIM.step_base_s * 1e3:g} ms steps, {SIM.max_num_seqs} seqs), "
        f"{CONCURRENCY} requests in flight. Sampled every 0.1 s from /proc/<pid>/smaps_rollup over the child's process tree."
    )
    section.body.append(table(["pages", "workers setting", "render processes", "processes in tree (max)", "peak PSS MB", "peak RSS sum MB",
                               "run process peak RSS MB", "its peak before the run (imports) MB",
                               "largest process peak RSS MB", "seconds"], rows))  # fmt: skip
    return section


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("PDF", "WORKDIR", "URL", "WORKERS"))
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
    else:
        result = run()
        for figure in result.figures:
            print(figure.row())
        print("\n\n".join(result.body))
