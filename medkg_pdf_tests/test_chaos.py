"""Chaos on the live stack: the daemon, PostgreSQL and the model server die in the middle of work.

One real `dagster-webserver` + `dagster-daemon` on a throwaway PostgreSQL (the project's
dagster.yaml: run queue, pools, run retries, run monitoring), the model server the vLLM double
answering each page with its own text after a latency, so every kill lands mid-document. After
each fault the test waits for states, never for a fixed time, and checks what the design
promises: every document ends materialized or failed with why (nothing left in progress), each
page's answer is stored once, and a page stored before the fault is never asked for again.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medkg_pdf import storage_keys
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.schemas import QuarantineRecord
from medkg_pdf.sources import file_ref, register
from medkg_pdf_tests.support.live_dagster import (
    LiveDagster,
    add_partition,
    daemons_healthy,
    launch_backfill,
    live_dagster,
    partition_status,
    postgres_bin_dir_or_skip,
    postgres_cluster,
    postgres_storage_yaml,
    runs_tagged,
    wait_for,
    write_instance,
)
from medkg_pdf_tests.support.chain import page_hashes
from medkg_pdf_tests.support.pdf_factory import text_pages_pdf
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DISCHARGE_LINES = ["Discharge medication", "Amoxicillin 500 mg every 8 hours for 7 days", "Ibuprofen 400 mg twice daily"]
PAGES = 4
LATENCY = Faults(latency_s=1.5)  # one page in flight per run (below): a document's pages take ~6 s
WAIT_S = 180
RUN_START_TIMEOUT_S = 15  # a run launched by the killed daemon but never started is failed after this (60 s in dagster.yaml)
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
CHAIN_RECORDS = {  # what each stage stores; the UI must never show a stage materialized without it
    "source_pdf": storage_keys.source_info,
    "page_images": storage_keys.page_images,
    "vlm_page_parses": storage_keys.page_parses,
    "structured_document": storage_keys.structured_json,
    "parse_quality": storage_keys.quality,
}


class Answers:
    """Each page answered with its own text (faithful: the quality gates pass); counts what is asked per page image."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.asked: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, png: bytes, request: dict) -> str:
        digest = hashlib.sha256(png).hexdigest()
        with self.lock:
            self.asked[digest] += 1
        return self.text[digest]


@dataclass
class Stack:
    dagster: LiveDagster
    double: VllmDouble
    answers: Answers
    storage: LocalStorage
    data: Path
    pg: dict
    pages: dict[tuple[str, int], str] = field(default_factory=dict)  # (PDF sha256, page index) -> page image hash
    documents_pages: dict[str, list[str]] = field(default_factory=dict)  # document id -> its page image hashes

    def documents(self, name: str, count: int) -> list[str]:
        """Register `count` new PDFs of PAGES distinct pages as `documents` partitions."""
        ids = []
        for n in range(count):
            pages = [[*DISCHARGE_LINES, f"{name} document {n} page {p + 1}"] for p in range(PAGES)]
            body = text_pages_pdf(pages)
            for digest, lines in zip(page_hashes(body, MODEL), pages, strict=True):
                self.answers.text[digest] = "\n\n".join(lines)
            path = self.data.parent / "pdfs" / f"{name}-{n}.pdf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            ref = file_ref(path)
            register(self.storage, ref)
            add_partition(self.dagster, ref.document_id)
            digests = page_hashes(body, MODEL)
            self.documents_pages[ref.document_id] = digests
            self.pages.update({(hashlib.sha256(body).hexdigest(), index): digest for index, digest in enumerate(digests)})
            ids.append(ref.document_id)
        return ids

    def stored_parses(self) -> dict[Path, bytes]:
        """Every page answer stored (content-keyed cache), with its bytes: a rewrite would change them."""
        return {path: path.read_bytes() for path in sorted(self.data.glob("cache/*/parses/page-*.json"))}

    def page_of(self, path: Path) -> str:
        """The page image hash a stored answer (`cache/<pdf sha256>/parses/page-00001-<key>.json`) is for."""
        return self.pages[(path.parent.parent.name, int(path.name.split("-")[1]) - 1)]

    def of(self, documents: list[str]) -> set[str]:
        return {digest for document_id in documents for digest in self.documents_pages[document_id]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    bin_dir = postgres_bin_dir_or_skip()
    root = tmp_path_factory.mktemp("chaos")
    answers = Answers()
    with postgres_cluster(bin_dir) as pg, VllmDouble(model=MODEL, answer=answers, faults=LATENCY) as double:
        home, data = root / "dagster_home", root / "data"
        write_instance(home, postgres_storage_yaml(pg), run_start_timeout_s=RUN_START_TIMEOUT_S)
        env = {
            **os.environ,
            "MEDKG_ENV": "local",
            "MEDKG_DATA_DIR": str(data),
            "MEDKG_VLLM_BASE_URL": double.url,
            "MEDKG_VLLM_MODEL": MODEL,
            "MEDKG_VLLM_MAX_CONCURRENCY": "1",
        }
        with live_dagster(home, env) as dagster:
            stack = Stack(dagster, double, answers, LocalStorage(root=str(data)), data, pg)
            try:
                yield stack
            except BaseException:
                print(dagster.logs())
                raise


@pytest.fixture
def chaos(stack, capsys):
    """The shared stack with the double's counters at zero; its processes' logs printed if the test fails."""
    stack.double.set_faults(LATENCY)
    stack.double.reset_counters()
    stack.answers.asked.clear()
    started = time.monotonic()
    try:
        yield stack
    finally:
        with capsys.disabled():
            print(f"\n{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}: {time.monotonic() - started:.1f} s")


@contextmanager
def logs_on_failure(stack: Stack):
    try:
        yield
    except BaseException:
        for document_id in stack.documents_pages:
            print(document_id, [(run["runId"][:8], run["status"]) for run in runs_of(stack.dagster, document_id)])
        print(stack.dagster.logs())
        raise


# -- what the UI asks -------------------------------------------------------------------------


def runs_of(dagster: LiveDagster, document_id: str) -> list[dict]:
    """Every run of a document: a backfill's (tagged with a one-document range), run retries, re-runs."""
    runs = {run["runId"]: run for key in ("dagster/partition", "dagster/asset_partition_range_start")
            for run in runs_tagged(dagster, key, document_id)}  # fmt: skip
    return list(runs.values())


def ended(stack: Stack, documents: list[str]) -> dict[str, str] | None:
    """Each document's end state once none of its runs is in progress: 'materialized' or 'failed'."""
    stack.dagster.check_alive()
    status = partition_status(stack.dagster)
    states = {}
    for document_id in documents:
        if any(run["status"] in IN_PROGRESS for run in runs_of(stack.dagster, document_id)):
            return None
        if document_id in status["materializedPartitions"]:
            states[document_id] = "materialized"
        elif document_id in status["failedPartitions"] or partition_status(stack.dagster, "source_pdf")["failedPartitions"] & {document_id}:
            states[document_id] = "failed"
        else:
            return None  # not run yet (a backfill still submitting, a retry not launched yet)
    return states


def wait_mid_document(stack: Stack, documents: list[str]) -> None:
    """Wait until a page request is in flight and a document has some, not all, of its pages stored."""

    def mid_document():
        stack.dagster.check_alive()
        stored = stack.stored_parses()
        return stored if stack.double.in_flight >= 1 and 1 <= len(stored) - before < PAGES * len(documents) else None

    before = len(stack.stored_parses())
    return wait_for("a page in flight with some pages stored", mid_document, WAIT_S, interval_s=0.1)


def assert_true_states(stack: Stack, states: dict[str, str]) -> None:
    """Materialized means every stage's record is stored; failed means the document says why."""
    for asset, key in CHAIN_RECORDS.items():
        materialized = partition_status(stack.dagster, asset)["materializedPartitions"]
        for document_id in states:
            if document_id in materialized:
                assert stack.storage.exists(key(document_id)), f"{asset} of {document_id} shown materialized, not stored"
    for document_id, state in states.items():
        if state == "failed":
            record = stack.storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
            assert record is not None and record.message, f"{document_id} failed without a recorded reason"


def assert_pages_stored_once(stack: Stack, documents: list[str], before: dict[Path, bytes]) -> set[str]:
    """One answer file per page; those stored before the fault untouched. Returns the pages stored before."""
    after = {path: body for path, body in stack.stored_parses().items() if stack.page_of(path) in stack.of(documents)}
    before = {path: body for path, body in before.items() if stack.page_of(path) in stack.of(documents)}
    for path, body in before.items():
        assert after[path] == body, f"{path.name} was rewritten"
    files_per_page = Counter(stack.page_of(path) for path in after)
    assert set(files_per_page) == stack.of(documents) and set(files_per_page.values()) == {1}, files_per_page
    return {stack.page_of(path) for path in before}


# -- the scenarios ----------------------------------------------------------------------------


def test_daemon_killed_mid_backfill_every_document_ends_and_no_stored_page_is_asked_again(chaos: Stack):
    """SIGKILL of the daemon's process group takes its code server and the run workers it launched with
    it, and nobody is left to report those runs. The new daemon must fail them (their worker pid is
    gone) and free their `vllm` pool slots, so run retries relaunch them and the backfill goes on."""
    documents = chaos.documents("daemon", 4)
    with logs_on_failure(chaos):
        launch_backfill(chaos.dagster, documents)
        wait_mid_document(chaos, documents)
        chaos.dagster.kill_daemon()
        stored_before, asked_before = chaos.stored_parses(), Counter(chaos.answers.asked)  # what the kill left
        started = [run["runId"] for doc in documents for run in runs_of(chaos.dagster, doc) if run["status"] == "STARTED"]
        chaos.dagster.start_new_daemon()

        states = wait_for("every document of the backfill to end", lambda: ended(chaos, documents), WAIT_S)
    print(f"runs started at the kill: {len(started)}, pages stored: {len(stored_before)}; end: {states}")
    assert started and set(states.values()) == {"materialized"}, states  # run retries relaunched the killed runs
    assert_true_states(chaos, states)
    stored = assert_pages_stored_once(chaos, documents, stored_before)
    asked_after = chaos.answers.asked - asked_before
    assert stored and not stored & set(asked_after), stored & set(asked_after)  # never asked again
    assert set(asked_after) == chaos.of(documents) - stored  # the rest asked after the kill


def run_again_if_failed(stack: Stack, document_id: str) -> str:
    """What an operator (or the reconciliation schedule) does for a document whose runs all failed: run it again."""
    states = wait_for("the document's runs to end", lambda: ended(stack, [document_id]), WAIT_S)
    if states[document_id] == "failed":
        launch_backfill(stack.dagster, [document_id])
        wait_for("the re-run to start", lambda: any(r["status"] in IN_PROGRESS for r in runs_of(stack.dagster, document_id)) or None, WAIT_S)
        states = wait_for("the re-run to end", lambda: ended(stack, [document_id]), WAIT_S)
    return states[document_id]


def test_postgres_restarted_mid_run_the_document_completes_and_the_instance_still_answers(chaos: Stack):
    """Every connection of the webserver, the daemon and the run worker is cut at once; the run either
    rides it out or fails with a reason, a re-run completes, nothing is shown materialized unstored."""
    (document_id,) = chaos.documents("postgres", 1)
    with logs_on_failure(chaos):
        launch_backfill(chaos.dagster, [document_id])
        wait_mid_document(chaos, [document_id])
        stored_before = chaos.stored_parses()
        chaos.pg["restart"]()
        first = run_again_if_failed(chaos, document_id)
        runs = runs_of(chaos.dagster, document_id)
        wait_for("the daemons to report healthy after the restart", lambda: daemons_healthy(chaos.dagster), WAIT_S)
    print(f"first attempt: {first}; runs: {[run['status'] for run in runs]}")
    assert first == "materialized", runs
    assert_true_states(chaos, {document_id: first})
    assert_pages_stored_once(chaos, [document_id], stored_before)
    assert set(chaos.double.ok_by_image.values()) == {1}  # no page answered twice into the output


def test_model_server_dropped_mid_request_the_pages_in_flight_are_retried_and_none_stored_twice(chaos: Stack):
    """The server goes away with a page in flight (listening socket closed, open connections reset, the
    answer never sent) and comes back: the page is asked again, the pages already stored are not."""
    (document_id,) = chaos.documents("server", 1)
    with logs_on_failure(chaos):
        launch_backfill(chaos.dagster, [document_id])
        wait_mid_document(chaos, [document_id])
        dropped = chaos.double.in_flight
        chaos.double.go_down()  # what was in flight is never answered
        stored_before, asked_before = chaos.stored_parses(), Counter(chaos.answers.asked)
        chaos.double.come_back()
        state = run_again_if_failed(chaos, document_id)
    print(f"dropped in flight: {dropped}; end: {state}; runs: {[r['status'] for r in runs_of(chaos.dagster, document_id)]}")
    assert state == "materialized"
    assert_true_states(chaos, {document_id: state})
    stored = assert_pages_stored_once(chaos, [document_id], stored_before)
    asked_after = chaos.answers.asked - asked_before
    assert stored and not stored & set(asked_after) and set(asked_after) == chaos.of([document_id]) - stored
    assert set(chaos.double.ok_by_image.values()) == {1}  # each page answered once, none twice
