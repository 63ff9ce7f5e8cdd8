"""A vLLM-like OpenAI-compatible server whose speed follows from a few numbers (continuous batching).

The engine behaves like vLLM's scheduler, reduced to what decides throughput and latency:

* at most `max_num_seqs` requests decode together (the running batch); the rest wait in a FIFO queue;
* one engine step takes `step_base_s + step_per_seq_s * running` and gives every running request
  one token; a request is done after its `tokens` steps (drawn from [tokens, tokens_max] when
  `tokens_max` is set, from a seeded generator), or `max_tokens` of the request if smaller
  (finish_reason "length");
* a waiting request joins the batch at the next step boundary. Prefill is not modelled unless
  `prefill_s_per_token` > 0: then the step that admits requests lasts that much longer per prompt
  token admitted (the page image's tokens, 28-px patches as Qwen2.5-VL counts them: ~2.7k for a
  letter page at 150 DPI; or a fixed `prompt_tokens`), which delays every running request too.

So at a full batch it finishes requests at the *ideal* rate

    max_num_seqs / (mean tokens * (step_base_s + step_per_seq_s * max_num_seqs))   requests/s

(with prefill: one page per `mean tokens * full step / max_num_seqs + prefill seconds of a page`),
which `SimParams.ideal_rps` computes and the server prints when it starts. Steps run on a
continuous timeline while the engine is busy (a late wake-up of the event loop is caught up on the
next step, at most one step's worth), so the simulator's own scheduling jitter stays out of the
measurement.

HTTP (starlette + uvicorn with uvloop/httptools) in a *separate process*: `Simulator(params)` starts
`python -m bench.simulator ...`, so on a 2-core machine the server's CPU never shares a GIL with
the client being measured. Endpoints: GET /health, GET /v1/models (with max_model_len),
POST /v1/chat/completions (validates the page image data URL minimally: scheme, base64 head,
PNG/JPEG magic; and the context length, like vLLM), GET /metrics (Prometheus text:
`vllm:num_requests_running`, `vllm:num_requests_waiting`, token and request counters), and
GET /sim/stats (JSON engine counters: steps, busy seconds, batch occupancy, first arrival and last
completion) and POST /sim/reset for the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medkg_pdf.chat_contract import ChatContractError, data_url_payload, first_image_url, image_tokens, png_size

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # the production default: a plain-markdown profile
LETTER_150DPI_TOKENS = image_tokens(1275, 1650)  # 8.5 x 11 in at 150 DPI: 2714


@dataclass(frozen=True)
class SimParams:
    max_num_seqs: int = 16
    step_base_s: float = 0.010
    step_per_seq_s: float = 0.0005
    tokens: int = 50
    tokens_max: int | None = None  # None: every answer is `tokens` long
    model: str = DEFAULT_MODEL
    max_model_len: int = 32768
    seed: int = 0
    answer: str | None = None  # the markdown of every answer; None: a line naming the image
    prefill_s_per_token: float = 0.0  # extra step time per prompt token admitted; 0: prefill not modelled
    prompt_tokens: int | None = None  # prompt tokens of every request; None: from the image size (+ text)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.tokens < 1:
            raise ValueError("max_num_seqs and tokens must be >= 1")
        if self.step_base_s < 0 or self.step_per_seq_s < 0 or self.step_base_s + self.step_per_seq_s <= 0:
            raise ValueError("step times must be >= 0 and not both 0")
        if self.tokens_max is not None and self.tokens_max < self.tokens:
            raise ValueError("tokens_max must be >= tokens")
        if self.prefill_s_per_token < 0 or (self.prompt_tokens is not None and self.prompt_tokens < 1):
            raise ValueError("prefill_s_per_token must be >= 0 and prompt_tokens >= 1")

    def step_s(self, running: int) -> float:
        return self.step_base_s + self.step_per_seq_s * running

    @property
    def mean_tokens(self) -> float:
        return self.tokens if self.tokens_max is None else (self.tokens + self.tokens_max) / 2

    @property
    def prefill_s(self) -> float:
        """Prefill seconds of one page: `prompt_tokens`, else a letter page at 150 DPI."""
        return self.prefill_s_per_token * (self.prompt_tokens or LETTER_150DPI_TOKENS)

    @property
    def ideal_rps(self) -> float:
        """Requests (pages) per second with the batch always full (each admission pays its prefill)."""
        if not self.prefill_s_per_token:
            return self.max_num_seqs / (self.mean_tokens * self.step_s(self.max_num_seqs))
        return 1 / (self.mean_tokens * self.step_s(self.max_num_seqs) / self.max_num_seqs + self.prefill_s)

    def latency_s(self, running: int, tokens: float | None = None) -> float:
        """Service time of one request in a steady batch of `running` (no queueing)."""
        return (self.mean_tokens if tokens is None else tokens) * self.step_s(running)

    def to_args(self) -> list[str]:
        args = []
        for name, value in asdict(self).items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return args

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        kinds = {"tokens_max": int, "answer": str, "prompt_tokens": int}
        for name, value in asdict(cls()).items():
            parser.add_argument(f"--{name.replace('_', '-')}", type=kinds.get(name, type(value)), default=value)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=0, help="0: a free port, printed on stdout")
        return parser

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "SimParams":
        return cls(**{name: getattr(ns, name) for name in asdict(cls())})


# ----- the engine --------------------------------------------------------------------------------


@dataclass
class Sequence:
    tokens: int
    finish_reason: str
    future: asyncio.Future
    arrived: float
    prompt_tokens: int = 0
    remaining: int = 0
    started: float | None = None

    def __post_init__(self) -> None:
        self.remaining = self.tokens


@dataclass
class EngineStats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    steps: int = 0
    full_steps: int = 0  # steps with max_num_seqs running
    seq_steps: int = 0  # sum over steps of the running batch size = tokens generated
    busy_s: float = 0.0
    prompt_tokens: int = 0  # admitted
    prefill_s: float = 0.0  # part of busy_s
    max_running: int = 0
    max_waiting: int = 0
    queue_s_total: float = 0.0
    latency_s_total: float = 0.0
    latency_s_max: float = 0.0
    first_arrival: float | None = None  # time.monotonic() (system-wide on Linux): comparable across processes
    last_completion: float | None = None

    def as_dict(self, engine: "Engine") -> dict[str, Any]:
        data = asdict(self)
        data["running"] = len(engine.running)
        data["waiting"] = len(engine.waiting)
        data["mean_batch"] = self.seq_steps / self.steps if self.steps else 0.0
        data["ideal_rps"] = engine.params.ideal_rps
        data["max_num_seqs"] = engine.params.max_num_seqs
        data["clock"] = time.monotonic()
        return data


class Engine:
    """The batching loop. Pure asyncio: `submit` from request handlers, `run` as one task."""

    def __init__(self, params: SimParams):
        self.params = params
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats()
        self._rng = random.Random(params.seed)
        self._wake: asyncio.Event | None = None

    def submit(self, max_tokens: int | None = None, prompt_tokens: int = 0) -> Sequence:
        loop = asyncio.get_running_loop()
        p = self.params
        tokens = p.tokens if p.tokens_max is None else self._rng.randint(p.tokens, p.tokens_max)
        finish = "stop"
        if max_tokens is not None and max_tokens < tokens:
            tokens, finish = max_tokens, "length"
        seq = Sequence(tokens=tokens, finish_reason=finish, future=loop.create_future(), arrived=loop.time(),
                       prompt_tokens=p.prompt_tokens or prompt_tokens)
        self.waiting.append(seq)
        self.stats.requests += 1
        if self.stats.first_arrival is None:
            self.stats.first_arrival = time.monotonic()
        self.stats.max_waiting = max(self.stats.max_waiting, len(self.waiting))
        if self._wake is not None:
            self._wake.set()
        return seq

    def _admit(self, now: float) -> int:
        """Move waiting requests into the batch; returns the prompt tokens admitted (to prefill)."""
        admitted = 0
        while self.waiting and len(self.running) < self.params.max_num_seqs:
            seq = self.waiting.popleft()
            if seq.future.done():  # the client went away while waiting: vLLM aborts it
                self.stats.aborted += 1
                continue
            seq.started = now
            self.stats.queue_s_total += now - seq.arrived
            self.running.append(seq)
            admitted += seq.prompt_tokens
        self.stats.max_running = max(self.stats.max_running, len(self.running))
        return admitted

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        timeline = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                timeline = loop.time()
            admitted = self._admit(loop.time())  # prompt tokens to prefill in this step
            prefill = self.params.prefill_s_per_token * admitted
            if not self.running:
                continue
            n = len(self.running)
            duration = self.params.step_s(n) + prefill
            # a continuous timeline while busy; a late wake-up is caught up by at most one step
            start = max(timeline, loop.time() - duration)
            end = start + duration
            await asyncio.sleep(max(0.0, end - loop.time()))  # always yield, even when late
            timeline = end
            stats = self.stats
            stats.steps += 1
            stats.seq_steps += n
            stats.busy_s += duration
            stats.prefill_s += prefill
            stats.prompt_tokens += admitted
            stats.full_steps += n == self.params.max_num_seqs
            still = []
            for seq in self.running:
                if seq.future.done():
                    stats.aborted += 1
                    continue
                seq.remaining -= 1
                if seq.remaining > 0:
                    still.append(seq)
                    continue
                latency = end - seq.arrived
                stats.completed += 1
                stats.latency_s_total += latency
                stats.latency_s_max = max(stats.latency_s_max, latency)
                stats.last_completion = time.monotonic()
                seq.future.set_result({"queue_s": seq.started - seq.arrived, "latency_s": latency})
            self.running = still


# ----- HTTP ----------------------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"object": "error", "error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def inspect_image(data_url: Any) -> tuple[int, int, int]:
    """Minimal validation of a page image data URL; returns (width, height, crc32 of the payload)."""
    payload = data_url_payload(data_url)
    if payload is None:
        raise BadRequest(400, "image_url must be a base64 data URL (data:image/...;base64,...)")
    if len(payload) < 32 or len(payload) % 4:
        raise BadRequest(400, "image_url data is not valid base64")
    try:
        head = base64.b64decode(payload[:32], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, "image_url data is not valid base64") from None
    if head.startswith(b"\xff\xd8\xff"):
        width = height = 448  # JPEG size needs the SOF marker; good enough for token accounting
    else:
        try:
            width, height = png_size(head)
        except ChatContractError:
            raise BadRequest(400, "cannot identify image file") from None
    if width < 1 or height < 1:
        raise BadRequest(400, "image has no pixels")
    return width, height, zlib.crc32(payload.encode("ascii", "replace"))


def parse_chat(body: Any, params: SimParams) -> dict[str, Any]:
    """What the engine needs from a chat completion request; raises BadRequest like vLLM would."""
    if not isinstance(body, dict):
        raise BadRequest(400, "request body is not a JSON object")
    if body.get("model") != params.model:
        raise BadRequest(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    if body.get("stream"):
        raise BadRequest(400, "streaming is not supported by the simulator")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list")
    url, text_chars = first_image_url(messages)
    image = inspect_image(url) if url is not None else None
    if image is None:
        raise BadRequest(400, "no image_url in the request: this server parses page images")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise BadRequest(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
    width, height, crc = image
    prompt_tokens = image_tokens(width, height) + text_chars // 4 + 8
    budget = max_tokens if max_tokens is not None else max(1, params.max_model_len - prompt_tokens)
    if prompt_tokens + budget > params.max_model_len:
        raise BadRequest(
            400,
            f"This model's maximum context length is {params.max_model_len} tokens. However, you requested "
            f"{prompt_tokens + budget} tokens ({prompt_tokens} in the messages, {budget} in the completion). "
            "Please reduce the length of the messages or completion.",
        )
    return {"max_tokens": max_tokens, "prompt_tokens": prompt_tokens, "width": width, "height": height, "crc": crc}


def metrics_text(engine: Engine) -> str:
    label = '{model_name="%s"}' % engine.params.model.replace("\\", "\\\\").replace('"', '\\"')
    s = engine.stats
    rows = [
        ("vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.", len(engine.running)),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", len(engine.waiting)),
        ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", s.seq_steps),
        ("vllm:request_success_total", "counter", "Count of successfully processed requests.", s.completed),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
    return "\n".join(lines) + "\n"


def create_app(params: SimParams):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    engine = Engine(params)
    ids = iter(range(1, 1 << 62))

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(engine.run())
        app.state.engine = engine
        try:
            yield
        finally:
            task.cancel()

    async def health(request: Request):
        return Response(status_code=200)

    async def models(request: Request):
        entry = {"id": params.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                 "root": params.model, "parent": None, "max_model_len": params.max_model_len, "permission": []}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON", "BadRequestError")
        try:
            req = parse_chat(body, params)
        except BadRequest as error:
            return _error(error.status, error.message, error.kind)
        seq = engine.submit(req["max_tokens"], req["prompt_tokens"])
        try:
            timing = await seq.future
        finally:
            if not seq.future.done():
                seq.future.cancel()  # client gone: the engine drops it at the next step
        text = params.answer or f"# Page\n\nSimulated transcription of image {req['crc']:08x} ({req['width']}x{req['height']} px)."
        return JSONResponse(
            {
                "id": f"chatcmpl-{next(ids):024x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": params.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": seq.finish_reason}],
                "usage": {"prompt_tokens": req["prompt_tokens"], "completion_tokens": seq.tokens,
                          "total_tokens": req["prompt_tokens"] + seq.tokens},  # fmt: skip
                "sim": {"queue_s": round(timing["queue_s"], 6), "latency_s": round(timing["latency_s"], 6)},
            }
        )

    async def metrics(request: Request):
        return PlainTextResponse(metrics_text(engine), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def stats(request: Request):
        return JSONResponse(engine.stats.as_dict(engine))

    async def reset(request: Request):
        engine.stats = EngineStats()
        return JSONResponse(engine.stats.as_dict(engine))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ns = SimParams.parser().parse_args(argv)
    params = SimParams.from_namespace(ns)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ns.host, ns.port))
    port = sock.getsockname()[1]
    full = params.step_s(params.max_num_seqs)
    print(
        f"vLLM simulator on http://{ns.host}:{port}: max_num_seqs={params.max_num_seqs}, step={params.step_base_s * 1e3:.2f} ms"
        f" + {params.step_per_seq_s * 1e3:.3f} ms/seq ({full * 1e3:.2f} ms at a full batch), {params.mean_tokens:g} tokens/answer"
        + (f", prefill {params.prefill_s_per_token * 1e3:.3f} ms/prompt token ({params.prefill_s:.3f} s a "
           f"{params.prompt_tokens or LETTER_150DPI_TOKENS}-token page)" if params.prefill_s_per_token else "")
        + f" -> ideal {params.ideal_rps:.2f} requests/s at a full batch",
        flush=True,
    )
    print(json.dumps({"port": port, "ideal_rps": params.ideal_rps, "params": asdict(params)}), flush=True)
    os.dup2(2, 1)  # nothing more on stdout: the parent stops reading it
    config = uvicorn.Config(
        create_app(params), loop="uvloop", http="httptools", lifespan="on", log_level="warning",
        access_log=False, timeout_keep_alive=120, backlog=4096,
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


# ----- the launcher -------------------------------------------------------------------------------


@dataclass
class Simulator:
    """`with Simulator(SimParams(...)) as sim:` a simulator process on 127.0.0.1; `sim.url`, `sim.stats()`."""

    params: SimParams = field(default_factory=SimParams)
    startup_timeout_s: float = 30.0
    port: int | None = None
    banner: str = ""
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Simulator":
        import httpx

        self._log = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.simulator", *self.params.to_args()],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout_s
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.port = json.loads(line)["port"]
                break
            self.banner += line.strip()
        self.process.stdout.close()
        if self.port is None:
            self.stop()
            raise RuntimeError(f"simulator did not start: {self._stderr()}")
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"simulator not healthy on {self.url}: {self._stderr()}")

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}/sim/stats", timeout=10).json()

    def reset(self) -> dict[str, Any]:
        """Zero the engine counters (call with nothing in flight)."""
        import httpx

        return httpx.post(f"{self.url}/sim/reset", timeout=10).json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Engine counters over an interval: batch occupancy while busy, busy fraction of the wall."""
    steps = after["steps"] - before["steps"]
    seq_steps = after["seq_steps"] - before["seq_steps"]
    wall = after["clock"] - before["clock"]
    busy = after["busy_s"] - before["busy_s"]
    window = None
    if after.get("first_arrival") is not None and after.get("last_completion") is not None:
        window = after["last_completion"] - after["first_arrival"]  # valid after a reset()
    return {
        "window_s": window,
        "completed": after["completed"] - before["completed"],
        "steps": steps,
        "mean_batch": seq_steps / steps if steps else 0.0,
        "full_step_share": (after["full_steps"] - before["full_steps"]) / steps if steps else 0.0,
        "busy_share": busy / wall if wall > 0 else 0.0,
        "max_waiting": after["max_waiting"],
    }


if __name__ == "__main__":
    main()
