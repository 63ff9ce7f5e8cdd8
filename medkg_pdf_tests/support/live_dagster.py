"""A running Dagster for end-to-end tests: `dagster-webserver` + `dagster-daemon` as real processes,
a GraphQL client that speaks to the webserver as the UI does, and a throwaway PostgreSQL cluster.

Every process is started in its own session, so stopping it (SIGTERM, then SIGKILL after a
timeout) also stops what it spawned: code servers and run workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from medkg_pdf.engine.process import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]  # medkg_pdf_tests/support/ -> the repository
BIN = Path(sys.executable).parent
LOCATION = "medkg_pdf"
REPOSITORY = "__repository__"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, OSError) as error:
            last_error = error
        time.sleep(interval_s)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")


# ---------------------------------------------------------------------------------------------
# processes


class Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the process group, wait, then SIGKILL whatever is left of the group."""
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # leftovers (run workers), or the leader if it hung
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # start_new_session: the group id is the child's pid
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LiveDagster:
    home: Path
    url: str
    webserver: Process
    daemon: Process | None
    env: dict[str, str]

    def kill_daemon(self) -> None:
        """SIGKILL the daemon's process group: its code server and the run workers it launched die with
        it, as when the daemon's container or host process is killed."""
        self.daemon._signal_group(signal.SIGKILL)
        self.daemon.popen.wait(timeout=10)
        self.daemon.stop(timeout_s=1)  # closes its log

    def start_new_daemon(self, timeout_s: float = 120) -> None:
        """A new daemon on the same instance, once it reports healthy."""
        self.daemon = start_daemon(self.home, self.env, name=f"{self.daemon.name}-new")
        wait_for("the new daemon to report healthy", lambda: daemons_healthy(self), timeout_s)

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def processes(self) -> list[Process]:
        return [p for p in (self.webserver, self.daemon) if p is not None]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (last lines) ---\n{p.tail()}" for p in self.processes())

    def check_alive(self) -> None:
        for process in self.processes():
            if not process.alive():
                raise AssertionError(f"{process.name} exited with {process.popen.returncode}\n{self.logs()}")


def write_instance(home: Path, storage_yaml: str | None, run_start_timeout_s: int | None = None) -> None:
    """The project's own dagster.yaml (run queue, pools, run retries), plus a storage section; a shorter
    run-monitoring start timeout when a test kills a daemon before its runs' workers start."""
    home.mkdir(parents=True, exist_ok=True)
    config = (REPO_ROOT / "dagster.yaml").read_text()
    if run_start_timeout_s is not None:
        assert "start_timeout_seconds: 60" in config, "dagster.yaml's run_monitoring.start_timeout_seconds moved"
        config = config.replace("start_timeout_seconds: 60", f"start_timeout_seconds: {run_start_timeout_s}")
    if storage_yaml:
        config += "\n" + storage_yaml
    (home / "dagster.yaml").write_text(config)
    (home / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: medkg_pdf.definitions\n"
        f"      working_directory: {REPO_ROOT}\n"
        f"      location_name: {LOCATION}\n"
    )


@contextmanager
def live_dagster(
    home: Path, env: dict[str, str], startup_timeout_s: float = 120, daemon: bool = True
) -> Iterator[LiveDagster]:
    """Start the webserver and (unless `daemon=False`: a UI on finished runs) the daemon on `home`;
    yield once the code location has loaded."""
    env = {**env, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    workspace = str(home / "workspace.yaml")
    port = free_port()
    if daemon:
        # Create the instance's tables first: webserver and daemon racing to create them on a fresh
        # SQLite home fail with "more than one head" (alembic). The webserver alone needs no help.
        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
    with ExitStack() as stack:
        daemon_process = start_daemon(home, env) if daemon else None
        webserver = Process(
            "dagster-webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
            env,
            REPO_ROOT,
            home,
        )
        stack.callback(webserver.stop)
        live = LiveDagster(home=home, url=f"http://127.0.0.1:{port}", webserver=webserver, daemon=daemon_process, env=env)
        stack.callback(lambda: live.daemon and live.daemon.stop())  # the one running now (start_new_daemon replaces it)

        def location_loaded() -> bool:
            live.check_alive()
            data = live.graphql(
                "query { workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )
            for entry in data["workspaceOrError"]["locationEntries"]:
                if entry["name"] == LOCATION:
                    state = entry["locationOrLoadError"]
                    if state and state["__typename"] == "PythonError":
                        raise AssertionError(f"code location failed to load: {state['message']}")
                    return state is not None and state["__typename"] == "RepositoryLocation"
            return False

        wait_for("the webserver to load the medkg_pdf code location", location_loaded, startup_timeout_s)

        if daemon:
            wait_for("every required daemon to report healthy", lambda: daemons_healthy(live), startup_timeout_s)
        yield live


def start_daemon(home: Path, env: dict[str, str], name: str = "dagster-daemon") -> Process:
    argv = [str(BIN / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")]
    return Process(name, argv, env, REPO_ROOT, home)


PARTITION_STATUS = """
query ($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { assetPartitionStatuses { ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions materializingPartitions } } }
  }
}"""


def partition_status(dagster: LiveDagster, asset: str = "parse_quality") -> dict[str, set[str]]:
    """An asset's partitions by state, as the UI's partition bar shows them."""
    data = dagster.graphql(PARTITION_STATUS, assetKey={"path": [asset]})
    statuses = data["assetNodeOrError"]["assetPartitionStatuses"]
    names = ("materializedPartitions", "failedPartitions", "materializingPartitions")
    return {name: set(statuses[name]) for name in names}


def launch_backfill(dagster: LiveDagster, partitions: list[str]) -> str:
    """A partition backfill of the whole document chain, as the UI's Materialize dialog launches it
    (one run per document; no run config: the code location's default executor); its id."""
    from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN

    data = dagster.graphql(
        """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        params={"partitionNames": partitions, "assetSelection": [{"path": key.path} for key in DOCUMENT_CHAIN],
                "fromFailure": False, "tags": []},  # fmt: skip
    )
    backfill_id = data["launchPartitionBackfill"].get("backfillId")
    assert backfill_id, data
    return backfill_id


def daemons_healthy(live: LiveDagster) -> bool:
    """Every required daemon has sent a heartbeat lately (the webserver's answer, as the UI shows it)."""
    live.check_alive()
    data = live.graphql("query { instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
    statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    return all(s["healthy"] for s in statuses if s["required"])


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bin_dir_or_skip() -> Path:
    """The server binaries, or the calling test skipped saying how to get them."""
    import pytest

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    return bin_dir


def postgres_bin_dir() -> Path | None:
    """The server binaries: on PATH, or where Debian's `postgresql` package puts them."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def _as_postgres_user(argv: list[str]) -> tuple[list[str], str | None]:
    """initdb refuses to run as root: run the server as `postgres` (or `nobody`) then."""
    if os.geteuid() != 0:
        return argv, None
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", user, "--", *argv], user
        return ["su", user, "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)], user
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@contextmanager
def postgres_cluster(bin_dir: Path, timeout_s: float = 60) -> Iterator[dict[str, Any]]:
    """A throwaway cluster on 127.0.0.1 (free port, trust auth, fsync off); removed afterwards.
    The dict's `restart` is `pg_ctl restart -m fast` (every connection dropped, the server back up)."""
    import pwd

    root = Path(tempfile.mkdtemp(prefix="medkg-pg-"))
    data, log = root / "data", root / "server.log"
    port = free_port()
    _, user = _as_postgres_user([])
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)

    def run(argv: list[str]) -> None:
        command, _ = _as_postgres_user(argv)
        subprocess.run(command, check=True, capture_output=True, timeout=timeout_s, cwd=root)

    try:
        run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
        run([*pg_ctl, "-w", "-t", str(int(timeout_s)), "start"])
        try:
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=10)
            try:
                conn.autocommit = True
                conn.cursor().execute("CREATE DATABASE dagster")
            finally:
                conn.close()
            yield {"host": "127.0.0.1", "port": port, "user": "postgres", "db": "dagster",
                   "restart": lambda: run([*pg_ctl, "-m", "fast", "-w", "-t", str(int(timeout_s)), "restart"])}  # fmt: skip
        finally:
            try:
                run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
            except subprocess.SubprocessError:
                pass
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postgres_storage_yaml(pg: dict[str, Any]) -> str:
    # `scheme` names the driver: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which
    # dagster-postgres does not install (it depends on psycopg2-binary).
    return (
        "storage:\n"
        "  postgres:\n"
        "    postgres_db:\n"
        "      scheme: postgresql+psycopg2\n"
        f"      username: {pg['user']}\n"
        "      password: unused-trust-auth\n"
        f"      hostname: {pg['host']}\n"
        f"      db_name: {pg['db']}\n"
        f"      port: {pg['port']}\n"
    )


# -- what the UI asks the webserver, shared by the end-to-end test and the live benchmarks ----

SENSOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": "s3_arrival_sensor"}

RUNS = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 100) {
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
  }
}"""


def runs_tagged(dagster: LiveDagster, key: str, value: str) -> list[dict]:
    runs = dagster.graphql(RUNS, filter={"tags": [{"key": key, "value": value}]})["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
    return runs


def add_partition(dagster: LiveDagster, document_id: str) -> None:
    data = dagster.graphql(
        """mutation ($repo: RepositorySelector!, $key: String!) {
          addDynamicPartition(repositorySelector: $repo, partitionsDefName: "documents", partitionKey: $key) {
            __typename ... on PythonError { message } } }""",
        repo={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
        key=document_id,
    )
    assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data
