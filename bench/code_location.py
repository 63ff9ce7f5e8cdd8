"""The code location as a run worker meets it: its chain job, and what importing it costs.

Shared by bench/overhead.py and bench/slo.py (neither imports the other).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import REPO

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
