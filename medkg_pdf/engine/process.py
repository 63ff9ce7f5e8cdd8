"""Run the embedded engine as a child process on a free loopback port.

A separate process keeps OCR's CPU work off the pipeline's event loop and makes the local
path identical to production: the resource only ever sees a URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def process_alive(pid: int) -> bool:
    """A process with this pid exists on this machine (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedEngine:
    def __init__(
        self,
        *,
        model_name: str,
        api_key: str | None = None,
        max_concurrency: int = 2,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 90.0,
    ):
        self.model_name = model_name
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "EmbeddedEngine":
        env = dict(os.environ)
        env.pop("MEDKG_ENGINE_API_KEY", None)
        if self.api_key:
            env["MEDKG_ENGINE_API_KEY"] = self.api_key  # passed by environment, never on the command line
        command = [
            sys.executable, "-m", "medkg_pdf.engine.server",
            "--host", self.host, "--port", str(self.port),
            "--model-name", self.model_name, "--max-concurrency", str(self.max_concurrency),
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on it
        self._process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                stderr = self._log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"embedded engine exited with code {self._process.returncode}: {stderr}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"embedded engine did not become healthy on {self.url} within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmbeddedEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
