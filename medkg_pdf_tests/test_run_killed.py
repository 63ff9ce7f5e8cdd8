"""A run killed mid-document (as the OOM killer kills it) leaves its document failed with why, never
materialized nor in progress: on the daemon path (a run worker launched by the DefaultRunLauncher
through a real code server) and on the CLI path (`medkg-pdf run`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetPartitionStatus, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from medkg_pdf import storage_keys
from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.schemas import QuarantineRecord
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
MODEL = "medkg-embedded-ocr"
PAGES = 12
SLOW = Faults(latency_s=1.0)  # 12 pages at 8 in flight: ~2 s of parsing, time to kill it in the middle


def _descendants(root: int) -> list[tuple[int, str]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(b")") + 2 :].split()[1]), []).append(int(entry))
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((pid, cmdline))
        stack.extend(children.get(pid, []))
    return found


def _wait(what: str, probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _chain_status(instance: DagsterInstance, document_id: str) -> set:
    keys = ["vlm_page_parses", "structured_document", "parse_quality"]
    return {instance.get_status_by_partition(AssetKey(k), [document_id], documents).get(document_id) for k in keys}


def test_daemon_run_killed_mid_document_is_failed_and_quarantined_as_oom(tmp_path, monkeypatch):
    from dagster import build_run_status_sensor_context
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_graphql.client.query import LAUNCH_PIPELINE_EXECUTION_MUTATION
    from dagster_graphql.test.utils import execute_dagster_graphql

    from medkg_pdf.defs.documents.sensors import run_death_sensor

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # run monitoring, run retries, pools as shipped
    data = tmp_path / "data"
    storage = LocalStorage(root=str(data))
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(pdf_factory.text_pdf([f"Line {i}: metformin 1000 mg twice daily" for i in range(20)], pages=PAGES))
    with VllmDouble(model=MODEL, faults=SLOW) as double, DagsterInstance.from_config(str(home)) as instance:
        for name, value in {"DAGSTER_HOME": str(home), "MEDKG_DATA_DIR": str(data), "MEDKG_VLLM_BASE_URL": double.url,
                            "MEDKG_VLLM_MODEL": MODEL, "MEDKG_ENV": "local"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)  # the code server and its run workers read these
        (document_id,) = register_files(storage, instance, [pdf])
        target = ModuleTarget(module_name="medkg_pdf.definitions", attribute=None, working_directory=str(REPO), location_name="medkg_pdf")
        with WorkspaceProcessContext(instance, target) as workspace:
            context = workspace.create_request_context()
            params = {
                "selector": {"repositoryLocationName": "medkg_pdf", "repositoryName": "__repository__", "jobName": "document_chain_job"},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": document_id}]},
            }
            launched = execute_dagster_graphql(context, LAUNCH_PIPELINE_EXECUTION_MUTATION, {"executionParams": params})
            assert not launched.errors, launched.errors
            payload = launched.data["launchPipelineExecution"]
            assert payload["__typename"] == "LaunchRunSuccess", payload
            run_id = payload["run"]["runId"]
            if instance.get_run_by_id(run_id).status == DagsterRunStatus.QUEUED:  # what the daemon's dequeuer does
                instance.launch_run(run_id, workspace.create_request_context())

            _wait("pages on the model server", lambda: double.requests >= 4, 60)
            workers = [pid for pid, cmd in _descendants(os.getpid()) if "spawn_main" in cmd or "execute_run" in cmd]
            assert workers, _descendants(os.getpid())
            for pid in workers:
                os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
            # the code server notices its run worker died and fails the run
            run = _wait("the run to be marked failed", lambda: (r := instance.get_run_by_id(run_id)).is_finished and r, 30)

        assert run.status == DagsterRunStatus.FAILURE
        assert double.requests < PAGES  # killed mid-document
        failure = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records[0].event_log_entry.dagster_event
        sensor_context = build_run_status_sensor_context(
            sensor_name="run_death_sensor", dagster_event=failure, dagster_instance=instance, dagster_run=run,
            resources={"storage": storage},
        ).for_run_failure()  # fmt: skip
        run_death_sensor(sensor_context)

        record = storage.read_model(storage_keys.quarantine(document_id), QuarantineRecord)
        assert record.reason == "oom_killed" and record.retryable and record.run_id == run_id
        assert "signal 9" in record.message and record.next_attempt_at is not None
        assert AssetPartitionStatus.MATERIALIZED not in _chain_status(instance, document_id)
        assert AssetPartitionStatus.IN_PROGRESS not in _chain_status(instance, document_id)
        assert not storage.exists(storage_keys.page_parses(document_id))


def test_cli_killed_mid_document_leaves_it_failed_with_the_reason(tmp_path):
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(pdf_factory.text_pdf([f"Line {i}: warfarin 5 mg daily" for i in range(20)], pages=PAGES))
    data = tmp_path / "data"
    with VllmDouble(model=MODEL, faults=SLOW) as double:
        env = dict(os.environ, MEDKG_VLLM_BASE_URL=double.url, MEDKG_VLLM_MODEL=MODEL, DAGSTER_HOME="")
        argv = [sys.executable, "-m", "medkg_pdf.cli", "run", str(pdf), "--json", "--data-dir", str(data)]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stored = lambda: sorted(data.glob("cache/*/parses/page-*.json"))  # noqa: E731
        try:
            _wait("pages stored", lambda: stored() or process.poll() is not None, 90)
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
        finally:
            process.kill()  # SIGKILL, as the OOM killer
            process.wait(timeout=30)
        assert double.requests < PAGES
        stored_before = len(stored())
        requests_before = double.requests
    from medkg_pdf.cli import fail_orphaned_runs

    storage = LocalStorage(root=str(data))
    with DagsterInstance.from_config(str(data / "dagster_home")) as instance:
        (run,) = instance.get_runs(RunsFilter(tags={"medkg/trigger": "cli"}))
        assert run.status == DagsterRunStatus.STARTED  # the dead process left it so
        assert fail_orphaned_runs(instance, storage) == [run.run_id]  # what the next `medkg-pdf run` does first
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        document_id = run.tags["dagster/partition"]
        record = storage.read_model(storage_keys.quarantine(document_id), QuarantineRecord)
        assert record.reason == "process_died" and record.retryable and record.run_id == run.run_id
        assert "died before the run ended" in record.message
        assert AssetPartitionStatus.MATERIALIZED not in _chain_status(instance, document_id)
        assert AssetPartitionStatus.IN_PROGRESS not in _chain_status(instance, document_id)
        assert not storage.exists(storage_keys.page_parses(document_id))

        # the next run resumes: the pages stored before the kill are not asked for again
        with VllmDouble(model=MODEL) as again:
            rerun = subprocess.run(argv, env=dict(env, MEDKG_VLLM_BASE_URL=again.url), capture_output=True, text=True, timeout=120)
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            assert again.requests == PAGES - stored_before < PAGES
        (result,) = [json.loads(line) for line in rerun.stdout.splitlines() if line.startswith("{")]
        assert result["status"] == "ok" and result["pages_ok"] == PAGES, result
        assert stored_before >= 1 and requests_before >= stored_before


@pytest.mark.parametrize(
    ("exit_code", "reason", "expected"),
    [(137, "OOMKilled", "oom_killed"), (1, "Error", "run_process_died")],
)
def test_a_run_pod_that_died_on_kubernetes_is_quarantined_with_what_the_kubelet_said(tmp_path, exit_code, reason, expected):
    """Run monitoring fails the run with the pod's container status (dagster-k8s formats it; no API server
    here, so the status is the kubernetes client's own object); the sensor reads the reason from it."""
    from dagster_k8s.client import DagsterKubernetesClient
    from kubernetes.client import V1ContainerState, V1ContainerStateTerminated, V1ContainerStatus

    from medkg_pdf.defs.documents.sensors import quarantine_dead_run

    status = V1ContainerStatus(
        name="dagster", image="ghcr.io/medkg/medkg-pdf:0.1.0", image_id="", ready=False, restart_count=0,
        state=V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code, reason=reason)),
    )  # fmt: skip
    container = DagsterKubernetesClient._get_container_status_str(None, status)  # self is not used
    storage = LocalStorage(root=str(tmp_path / "data"))
    with DagsterInstance.ephemeral() as instance:
        run = instance.create_run_for_job(job_def=_one_op_job(), tags={"dagster/partition": "label-0123456789"})
        instance.report_run_failed(run, f"Detected run worker status K8s job failed. Marking run {run.run_id} as failed.\n"
                                        f"Pod dagster-run-{run.run_id[:8]}: container dagster: {container}")  # fmt: skip
        record = quarantine_dead_run(instance, storage, instance.get_run_by_id(run.run_id))
    assert record is not None and record.reason == expected and record.retryable
    assert container in record.message and storage.read_model(storage_keys.quarantine("label-0123456789"), QuarantineRecord) == record


def _one_op_job():
    from dagster import job, op

    @op
    def nothing() -> None:
        pass

    @job
    def one_op():
        nothing()

    return one_op


def test_a_local_run_whose_worker_died_with_its_daemon_is_failed_and_its_document_quarantined(tmp_path):
    """Nobody is left to report a worker killed with its daemon's process group: the sensor finds its pid
    gone, fails the run (run retries relaunch it) and records why, as the dead-run sensor records any death."""
    from dagster import DagsterRun
    from dagster._core.events import EngineEventData

    from medkg_pdf.defs.documents.sensors import fail_dead_local_runs

    storage = LocalStorage(root=str(tmp_path / "data"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:  # the local (default) run launcher
        run = instance.add_run(DagsterRun(job_name="document_chain_job", status=DagsterRunStatus.STARTED,
                                          tags={"dagster/partition": "label-0123456789"}))  # fmt: skip
        instance.report_engine_event("Started process for run", run, EngineEventData(metadata={"pid": str(gone.pid)}))
        alive = instance.add_run(DagsterRun(job_name="document_chain_job", status=DagsterRunStatus.STARTED,
                                            tags={"dagster/partition": "other-0123456789"}))  # fmt: skip
        instance.report_engine_event("Started process for run", alive, EngineEventData(metadata={"pid": str(os.getpid())}))
        # a `medkg-pdf run` killed while a daemon watches the same instance: the command's own death, said as such
        by_cli = instance.add_run(DagsterRun(job_name="document_chain_job", status=DagsterRunStatus.STARTED,
                                             tags={"dagster/partition": "cli-0123456789", "medkg/trigger": "cli"}))  # fmt: skip
        instance.report_engine_event("Executing steps in process", by_cli, EngineEventData(metadata={"pid": str(gone.pid)}))

        assert sorted(fail_dead_local_runs(instance, storage)) == sorted([run.run_id, by_cli.run_id])
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
    record = storage.read_model(storage_keys.quarantine("label-0123456789"), QuarantineRecord)
    assert record.reason == "run_process_died" and record.retryable and record.run_id == run.run_id
    assert f"pid {gone.pid}" in record.message and "code server" in record.message
    assert storage.read_model_or_none(storage_keys.quarantine("other-0123456789"), QuarantineRecord) is None
    cli_record = storage.read_model(storage_keys.quarantine("cli-0123456789"), QuarantineRecord)
    assert cli_record.reason == "process_died" and "medkg-pdf process" in cli_record.message
