"""A fault-injecting test double of a vLLM server (OpenAI-compatible HTTP API).

Tests and benchmarks point the project's model-server client at :class:`VllmDouble` to prove
it copes with a slow, flaky or dead server. It is built on the standard library's
``ThreadingHTTPServer`` because that gives direct control of each TCP connection: a fault can
hard-reset a socket (``SO_LINGER {1, 0}``), and an outage can sever every open keep-alive
connection and refuse new ones, which an ASGI server cannot do.

Usage::

    with VllmDouble(faults=Faults(script=["503", "reset", "ok"])) as server:
        client = httpx.Client(base_url=server.url)
        ...
        assert server.faults_injected["error_503"] == 1

Endpoints (like vLLM): ``GET /health``, ``GET /version``, ``GET /v1/models``, ``GET /metrics``,
``POST /v1/chat/completions``. Faults apply to chat completions only; ``healthy`` and
``models`` change the health and model-list endpoints.

Counters are updated *before* the response is written, so a client that has read a response
can assert on them at once without racing the server thread.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import re
import hmac
import json
import math
import random
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from medkg_pdf.chat_contract import PNG_SIGNATURE, ChatContractError, data_url_payload, first_image_url, image_tokens, png_size

__all__ = ["FAULT_NAMES", "Faults", "VllmDouble", "default_answer", "make_png"]

#: Canonical fault names, in the order their probabilities are laid out on [0, 1).
FAULT_NAMES = ("error_500", "error_503", "rate_limit_429", "reset", "stall", "garbage", "bad_shape", "endless")
_ALIASES = {"ok": "ok", "500": "error_500", "503": "error_503", "429": "rate_limit_429"}
_ALIASES.update({name: name for name in FAULT_NAMES})

GARBAGE_BODY = b'{"id": "chatcmpl-trunc\x00\xff<html>502 Bad Gateway</html>'
ENDLESS_LIMIT = 256 * 2**20  # an "endless" body stops here if the client never hangs up


@dataclass
class Faults:
    """What goes wrong, per ``POST /v1/chat/completions`` request.

    ``script`` entries are consumed one per chat request first (``"ok"``, ``"500"``, ``"503"``,
    ``"429"``, ``"reset"``, ``"stall"``, ``"garbage"``, ``"bad_shape"``, or the long field
    names); once it is exhausted each request draws one number from ``random.Random(seed)``
    and lands in one fault's probability band (so the probabilities must sum to at most 1).
    """

    error_500: float = 0.0
    error_503: float = 0.0
    rate_limit_429: float = 0.0
    reset: float = 0.0  # close the socket with SO_LINGER {1, 0}: the client sees a reset, no response
    stall: float = 0.0  # sleep stall_s before answering (wakes early when the server goes down)
    garbage: float = 0.0  # 200 with a body that is not JSON
    bad_shape: float = 0.0  # 200 JSON without "choices"
    endless: float = 0.0  # 200 whose body never ends (up to ENDLESS_LIMIT): a runaway generation or a broken proxy
    script: list[str] = field(default_factory=list)
    seed: int = 0
    retry_after_s: float = 1  # Retry-After header of a 429 (fractional values are sent as is)
    stall_s: float = 30.0
    models: list[str] | None = None  # override of the model list (chat for other models: 404)
    healthy: bool = True  # False: GET /health answers 503
    latency_s: float = 0.0  # added to every successful completion
    latency_jitter_s: float = 0.0  # plus uniform(0, jitter), from its own seeded generator

    def __post_init__(self) -> None:
        total = 0.0
        for name in FAULT_NAMES:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"Faults.{name} must be a probability in [0, 1], got {p!r}")
            total += p
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:.3f} > 1")
        for entry in self.script:
            if entry not in _ALIASES:
                raise ValueError(f"unknown fault {entry!r} in script; use one of {sorted(_ALIASES)}")
        for name in ("stall_s", "latency_s", "latency_jitter_s", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0")


def default_answer(png: bytes, request: dict) -> str:
    """Distinct and deterministic per page image."""
    return "# Page\n\nImage sha256 " + hashlib.sha256(png).hexdigest()[:12]


def make_png(width: int = 8, height: int = 8, fill: int = 255) -> bytes:
    """A valid greyscale PNG (stdlib only); vary ``fill`` to get distinct page images."""
    raw = b"".join(b"\x00" + bytes([fill & 0xFF]) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _looks_like_image(data: bytes) -> bool:
    return (
        data.startswith(PNG_SIGNATURE)
        or data.startswith(b"\xff\xd8\xff")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


class _RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, handler, double: "VllmDouble", generation: int):
        self.double = double
        self.generation = generation
        self.alive = True
        self.connections: set[socket.socket] = set()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:  # connection errors are expected here
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn: the client pools connections
    server_version = "uvicorn"
    sys_version = ""
    server: _Server

    # -- connection bookkeeping -------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # headers and body are separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.server.double._register(self.server, self.connection):
            self._abort()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.double._unregister(self.server, self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _abort(self) -> None:
        """Hard reset: RST instead of FIN, no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # the makefile() reference would otherwise defer the real close
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _peer_gone(self) -> bool:
        """True when the client has closed its end (e.g. it timed out while we slept)."""
        try:
            self.connection.setblocking(False)
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            finally:
                self.connection.setblocking(True)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    # -- responses --------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> bool:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _json(self, status: int, payload: Any, headers: dict | None = None) -> bool:
        return self._send(status, json.dumps(payload).encode(), headers=headers)

    def _stream_endless(self) -> int:
        """A 200 with no length whose content never closes; returns the bytes written before the client hung up."""
        self.close_connection = True
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"message": {"content": "')
            chunk = b"| 5 mg " * 9362
            while sent < ENDLESS_LIMIT:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        return sent

    def _error(self, status: int, message: str, kind: str, headers: dict | None = None) -> bool:
        return self._json(
            status, {"object": "error", "error": {"message": message, "type": kind, "code": status}}, headers
        )

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _RequestError(400, "invalid Content-Length", "BadRequestError") from None
        return self.rfile.read(n) if n > 0 else b""

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(65537)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline(3)

    def _authorized(self) -> bool:
        key = self.server.double.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {key}"
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())

    def _deny(self) -> None:
        # never echo the key (neither the expected one nor what the client sent)
        self._error(401, "Unauthorized: missing or invalid API key", "AuthenticationError")

    # -- routing ----------------------------------------------------------------------

    def do_GET(self) -> None:
        double = self.server.double
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200 if double.faults.healthy else 503, b"")
        elif path == "/version":
            self._json(200, {"version": "0.0.0-double"})
        elif path == "/metrics":
            self._send(200, double._metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            if not self._authorized():
                self._deny()
                return
            now = int(time.time())
            data = [
                {
                    "id": name,
                    "object": "model",
                    "created": now,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": None,
                    "max_model_len": double.max_model_len,
                    "permission": [],
                }
                for name in double.served_models
            ]
            self._json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"Not Found: {path}", "NotFoundError")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/v1/chat/completions":
            try:
                self._read_body()
            except (OSError, _RequestError, ValueError):
                self.close_connection = True
            self._error(404, f"Not Found: {path}", "NotFoundError")
            return
        double = self.server.double
        double._enter()
        try:
            self._chat(double)
        finally:
            double._leave()

    def _chat(self, double: "VllmDouble") -> None:
        generation = self.server.generation
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        except _RequestError as error:
            double._count_error(error.status)
            self.close_connection = True
            self._error(error.status, error.message, error.kind)
            return
        try:
            request = json.loads(raw) if raw else None
        except ValueError:
            request = None
        double._record(
            {k.lower(): v for k, v in self.headers.items()}, _redact(request) if isinstance(request, dict) else request
        )
        if not self._authorized():
            double._count_error(401)
            self._deny()
            return

        fault = double._draw_fault()
        if fault == "reset":
            double._count_fault(fault)
            self._abort()
            return
        if fault == "error_500":
            double._count_fault(fault)
            self._error(500, "Internal Server Error (injected)", "InternalServerError")
            return
        if fault == "error_503":
            double._count_fault(fault)
            self._error(503, "Service Unavailable (injected)", "ServiceUnavailableError")
            return
        if fault == "rate_limit_429":
            double._count_fault(fault)
            retry_after = double.faults.retry_after_s
            value = str(int(retry_after)) if float(retry_after).is_integer() else repr(float(retry_after))
            self._error(429, "Too Many Requests (injected)", "RateLimitError", {"Retry-After": value})
            return
        if fault == "stall":
            double._count_fault(fault)
            if not double._sleep(double.faults.stall_s, generation):
                self._abort()
                return

        try:
            png, answer_text, finish_reason, usage = double._answer(request)
        except _RequestError as error:
            double._count_error(error.status)
            self._error(error.status, error.message, error.kind)
            return

        if fault == "garbage":
            double._count_fault(fault)
            self._send(200, GARBAGE_BODY)
            return
        if fault == "endless":
            double._count_fault(fault)
            double.endless_bytes_sent = self._stream_endless()
            return
        if fault == "bad_shape":
            double._count_fault(fault)
            self._json(200, {"id": double._next_id(), "object": "chat.completion", "model": request["model"], "usage": usage})
            return

        delay = double._latency()
        if delay > 0 and not double._sleep(delay, generation):
            self._abort()
            return
        if (delay > 0 or fault == "stall") and self._peer_gone():
            double._count_abandoned()
            self.close_connection = True
            return

        payload = {
            "id": double._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer_text, "tool_calls": []},
                    "logprobs": double._logprobs(answer_text) if request.get("logprobs") else None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                }
            ],
            "usage": usage,
            "prompt_logprobs": None,
        }
        image_key = hashlib.sha256(png).hexdigest()
        double._count_ok(image_key, usage)
        if not self._json(200, payload):
            double._uncount_ok(image_key, usage)
            double._count_abandoned()


def _redact(request: dict) -> dict:
    """A copy of the request body with every data URL replaced by a short placeholder."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and node.startswith("data:") and ";base64," in node:
            head, _, data = node.partition(";base64,")
            try:
                digest = hashlib.sha256(base64.b64decode(data, validate=False)).hexdigest()
            except (binascii.Error, ValueError):
                digest = "invalid"
            return f"{head};base64,<{len(data)} chars, sha256 {digest}>"
        return node

    return walk(request)


class VllmDouble:
    """A vLLM look-alike on 127.0.0.1 with injectable faults and thread-safe counters.

    Counters (read them as attributes): ``requests`` (chat requests received),
    ``completions_ok`` (200 answers sent), ``faults_injected`` (Counter by canonical fault
    name), ``errors`` (Counter by HTTP status of non-injected errors: 400/401/404/500),
    ``abandoned`` (answers dropped because the client had gone or the server went down),
    ``ok_by_image`` (Counter: ``sha256(png).hexdigest()`` -> successful answers),
    ``last_headers`` (one dict per chat request, header names lower-cased),
    ``request_bodies`` (parsed chat bodies, image data replaced by a placeholder),
    ``in_flight`` / ``max_in_flight`` (concurrent chat requests now / at peak).
    """

    def __init__(
        self,
        model: str = "Qwen/Qwen2.5-VL-7B-Instruct",
        api_key: str | None = None,
        faults: Faults | None = None,
        answer: Callable[[bytes, dict], str | tuple[str, str]] | None = None,
        max_model_len: int = 8192,
        *,
        port: int = 0,
        enforce_context: bool = True,
        token_logprob: Callable[[str], float] = lambda token: -0.01,
    ):
        self.model = model
        self.api_key = api_key
        self.answer = answer or default_answer
        self.max_model_len = max_model_len
        self.enforce_context = enforce_context
        self.token_logprob = token_logprob  # what `logprobs: true` returns for each token (a word with its leading blanks)
        self._port = port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._down = threading.Event()
        self._down.set()
        self._id = 0
        self.set_faults(faults or Faults())
        self.reset_counters()

    def _logprobs(self, text: str) -> dict:
        """vLLM's `choices[0].logprobs`: one entry per token; here a token is a word with the blanks before it."""
        tokens = re.findall(r"\s*\S+|\s+", text)
        return {"content": [{"token": t, "logprob": self.token_logprob(t), "bytes": list(t.encode()), "top_logprobs": []} for t in tokens]}

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "VllmDouble":
        if self._server is not None:
            raise RuntimeError("VllmDouble is already serving")
        self._bind(self._port)
        return self

    def stop(self) -> None:
        self._teardown()

    def go_down(self) -> None:
        """Outage: close the listening socket (new connections are refused), reset every open
        connection and wake stalled requests, which are dropped without a response."""
        if self._server is None:
            raise RuntimeError("VllmDouble is not serving")
        self._teardown()

    def come_back(self) -> None:
        """End the outage: listen again on the same port."""
        if self._server is not None:
            return
        if not self._port:
            raise RuntimeError("VllmDouble was never started")
        self._bind(self._port, retry_s=5.0)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("VllmDouble was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "VllmDouble":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self, port: int, retry_s: float = 0.0) -> None:
        deadline = time.monotonic() + retry_s
        with self._lock:
            self._generation += 1
            generation = self._generation
        while True:
            try:
                server = _Server(("127.0.0.1", port), _Handler, self, generation)
                break
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self._port = server.server_address[1]
        self._down.clear()
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"vllm-double:{self._port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()

    def _teardown(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        with self._lock:
            server.alive = False
            self._generation += 1
            connections = list(server.connections)
        self._down.set()  # wake stalls and latency sleeps
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _register(self, server: _Server, conn: socket.socket) -> bool:
        with self._lock:
            if not server.alive:
                return False
            server.connections.add(conn)
            return True

    def _unregister(self, server: _Server, conn: socket.socket) -> None:
        with self._lock:
            server.connections.discard(conn)

    def _sleep(self, seconds: float, generation: int) -> bool:
        """Sleep, waking early on an outage; False when the server went down meanwhile."""
        if seconds > 0:
            self._down.wait(seconds)
        with self._lock:
            return generation == self._generation and not self._down.is_set()

    # -- faults -----------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults at runtime; reseeds the generators and restarts the script."""
        with self._lock:
            self.faults = faults
            self._script = deque(_ALIASES[name] for name in faults.script)
            self._rng = random.Random(faults.seed)
            self._latency_rng = random.Random(f"latency:{faults.seed}")

    def update_faults(self, **changes: Any) -> None:
        """``set_faults(dataclasses.replace(current, **changes))``."""
        self.set_faults(replace(self.faults, **changes))

    @property
    def script_remaining(self) -> list[str]:
        with self._lock:
            return list(self._script)

    @property
    def served_models(self) -> list[str]:
        models = self.faults.models
        return list(models) if models is not None else [self.model]

    def _draw_fault(self) -> str:
        with self._lock:
            if self._script:
                return self._script.popleft()
            faults = self.faults
            if not any(getattr(faults, name) for name in FAULT_NAMES):
                return "ok"
            x = self._rng.random()
            edge = 0.0
            for name in FAULT_NAMES:
                edge += getattr(faults, name)
                if x < edge:
                    return name
            return "ok"

    def _latency(self) -> float:
        with self._lock:
            faults = self.faults
            jitter = self._latency_rng.uniform(0.0, faults.latency_jitter_s) if faults.latency_jitter_s else 0.0
            return faults.latency_s + jitter

    # -- the answer -------------------------------------------------------------------

    def _answer(self, request: Any) -> tuple[bytes, str, str, dict]:
        if not isinstance(request, dict):
            raise _RequestError(400, "request body is not a JSON object", "BadRequestError")
        model = request.get("model")
        if model not in self.served_models:
            raise _RequestError(404, f"The model `{model}` does not exist.", "NotFoundError")
        if request.get("stream"):
            raise _RequestError(400, "streaming is not supported by the test double", "BadRequestError")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RequestError(400, "messages must be a non-empty list", "BadRequestError")
        data_url, text_chars = first_image_url(messages)
        if not data_url:
            raise _RequestError(400, "no image_url in the request: this server parses page images", "BadRequestError")
        payload = data_url_payload(data_url)
        if payload is None:
            raise _RequestError(400, "image_url must be a base64 data URL (data:image/...;base64,...)", "BadRequestError")
        try:
            png = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _RequestError(400, "image_url data is not valid base64", "BadRequestError") from None
        if not _looks_like_image(png):
            raise _RequestError(400, "cannot identify image file", "BadRequestError")

        try:
            prompt_tokens = image_tokens(*png_size(png)) + text_chars // 4 + 8
        except ChatContractError:  # JPEG or WebP: a flat guess
            prompt_tokens = 256 + text_chars // 4 + 8
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _RequestError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", "BadRequestError")
        budget = max_tokens if max_tokens is not None else max(1, self.max_model_len - prompt_tokens)
        if self.enforce_context and prompt_tokens + budget > self.max_model_len:
            raise _RequestError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + budget} tokens ({prompt_tokens} in the messages, {budget} in the completion). "
                "Please reduce the length of the messages or completion.",
                "BadRequestError",
            )

        try:
            result = self.answer(png, request)
        except Exception as error:  # the callback is test code: report it as a server error
            raise _RequestError(500, f"answer callback failed: {type(error).__name__}: {error}", "InternalServerError") from None
        text, finish_reason = result if isinstance(result, tuple) else (result, "stop")
        completion_tokens = max(1, math.ceil(len(text) / 4))
        if completion_tokens > budget:  # like vLLM: cut at max_tokens
            text, completion_tokens, finish_reason = text[: budget * 4], budget, "length"
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
        }
        return png, text, finish_reason, usage

    # -- counters ---------------------------------------------------------------------

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.completions_ok = 0
            self.abandoned = 0
            self.faults_injected: Counter[str] = Counter()
            self.endless_bytes_sent = 0
            self.errors: Counter[int] = Counter()
            self.ok_by_image: Counter[str] = Counter()
            self.last_headers: list[dict[str, str]] = []
            self.request_bodies: list[Any] = []
            self.in_flight = 0
            self.max_in_flight = 0
            self._prompt_tokens = 0
            self._generation_tokens = 0

    def _enter(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _record(self, headers: dict, body: Any) -> None:
        with self._lock:
            self.last_headers.append(headers)
            self.request_bodies.append(body)

    def _count_fault(self, name: str) -> None:
        with self._lock:
            self.faults_injected[name] += 1

    def _count_error(self, status: int) -> None:
        with self._lock:
            self.errors[status] += 1

    def _count_abandoned(self) -> None:
        with self._lock:
            self.abandoned += 1

    def _count_ok(self, image_key: str, usage: dict) -> None:
        with self._lock:
            self.completions_ok += 1
            self.ok_by_image[image_key] += 1
            self._prompt_tokens += usage["prompt_tokens"]
            self._generation_tokens += usage["completion_tokens"]

    def _uncount_ok(self, image_key: str, usage: dict) -> None:
        with self._lock:
            self.completions_ok -= 1
            self.ok_by_image[image_key] -= 1
            if self.ok_by_image[image_key] <= 0:
                del self.ok_by_image[image_key]
            self._prompt_tokens -= usage["prompt_tokens"]
            self._generation_tokens -= usage["completion_tokens"]

    def _next_id(self) -> str:
        with self._lock:
            self._id += 1
            return f"chatcmpl-{self._id:024x}"

    def _metrics_text(self) -> str:
        with self._lock:
            running, ok = self.in_flight, self.completions_ok
            prompt, generated = self._prompt_tokens, self._generation_tokens
        label = '{model_name="%s"}' % self.model.replace("\\", "\\\\").replace('"', '\\"')
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} 0.0",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(prompt)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(generated)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{label[:-1]},finished_reason="stop"}} {float(ok)}',
        ]
        return "\n".join(lines) + "\n"
