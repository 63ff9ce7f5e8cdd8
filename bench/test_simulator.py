"""The benchmarks' vLLM simulator (simulator.py beside this file) behaves like vLLM's continuous batching.

Correctness only: counts, shapes and status codes. No timing is asserted (the machine is shared).
This is bench's own test: it lives with what it tests, so no test under medkg_pdf_tests/ imports bench.
"""

import asyncio
import base64
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about its httpx-based test client
    from starlette.testclient import TestClient

from bench.simulator import Engine, SimParams, Simulator, create_app, metrics_text, stats_delta
from medkg_pdf_tests.support.vllm_double import make_png

FAST = SimParams(max_num_seqs=8, step_base_s=0.0005, step_per_seq_s=0.0, tokens=3)


def chat_body(model: str, url: str, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "page to markdown"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def png_url(width: int = 56, height: int = 84) -> str:
    return "data:image/png;base64," + base64.b64encode(make_png(width, height)).decode()


def test_ideal_throughput_follows_from_the_parameters():
    params = SimParams(max_num_seqs=16, step_base_s=0.010, step_per_seq_s=0.0005, tokens=50)
    assert params.step_s(16) == pytest.approx(0.018)
    assert params.ideal_rps == pytest.approx(16 / (50 * 0.018))
    assert SimParams(tokens=10, tokens_max=30).mean_tokens == 20


def test_parameters_round_trip_through_the_command_line():
    params = SimParams(max_num_seqs=4, step_base_s=0.002, tokens=5, tokens_max=9, answer="# A\n\nb", seed=3)
    assert SimParams.from_namespace(SimParams.parser().parse_args(params.to_args())) == params


def test_at_most_max_num_seqs_decode_together_and_the_rest_wait():
    async def scenario():
        engine = Engine(FAST)
        seqs = [engine.submit() for _ in range(20)]
        # nothing has run yet: all 20 wait, as /metrics shows
        text = metrics_text(engine)
        assert 'vllm:num_requests_waiting{model_name="%s"} 20.0' % FAST.model in text
        assert 'vllm:num_requests_running{model_name="%s"} 0.0' % FAST.model in text
        task = asyncio.create_task(engine.run())
        results = await asyncio.gather(*(s.future for s in seqs))
        task.cancel()
        return engine, seqs, results

    engine, seqs, results = asyncio.run(scenario())
    stats = engine.stats
    assert stats.completed == 20 and stats.max_running == FAST.max_num_seqs
    assert stats.seq_steps == 20 * FAST.tokens  # one token per running request per step
    assert stats.steps == 3 * FAST.tokens  # batches of 8, 8, 4, each `tokens` steps long
    assert all(s.tokens == FAST.tokens and s.finish_reason == "stop" for s in seqs)
    assert sum(r["queue_s"] > 0 for r in results) >= 12  # the 12 beyond the first batch queued
    assert not engine.running and not engine.waiting


def test_max_tokens_cuts_the_answer_and_token_counts_are_seeded():
    async def scenario(params, **submit):
        engine = Engine(params)
        seqs = [engine.submit(**submit) for _ in range(30)]
        task = asyncio.create_task(engine.run())
        await asyncio.gather(*(s.future for s in seqs))
        task.cancel()
        return seqs

    cut = asyncio.run(scenario(FAST, max_tokens=2))
    assert all(s.tokens == 2 and s.finish_reason == "length" for s in cut)
    varied = SimParams(max_num_seqs=64, step_base_s=0.0002, step_per_seq_s=0.0, tokens=2, tokens_max=6, seed=5)
    first = [s.tokens for s in asyncio.run(scenario(varied))]
    assert first == [s.tokens for s in asyncio.run(scenario(varied))]
    assert set(first) <= set(range(2, 7)) and len(set(first)) > 1


def test_openai_endpoints_and_validation():
    params = SimParams(max_num_seqs=4, step_base_s=0.0005, step_per_seq_s=0.0, tokens=3, max_model_len=4096)
    with TestClient(create_app(params)) as client:
        assert client.get("/health").status_code == 200
        (model,) = client.get("/v1/models").json()["data"]
        assert model["id"] == params.model and model["max_model_len"] == 4096
        answer = client.post("/v1/chat/completions", json=chat_body(params.model, png_url(), max_tokens=100))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["message"]["content"].startswith("# Page")
        assert body["usage"]["completion_tokens"] == 3
        assert body["usage"]["prompt_tokens"] >= 2 * 3  # 56x84 px = 2x3 image patches of 28 px
        bad = [
            ("data:text/plain;base64,aGVsbG8=", 400),
            ("https://example.org/page.png", 400),
            ("data:image/png;base64,!!!!" + "A" * 40, 400),
            ("data:image/png;base64," + base64.b64encode(b"GIF89a" + bytes(40)).decode(), 400),
        ]
        for url, status in bad:
            assert client.post("/v1/chat/completions", json=chat_body(params.model, url)).status_code == status, url
        assert client.post("/v1/chat/completions", json=chat_body("other/model", png_url())).status_code == 404
        assert client.post("/v1/chat/completions", json={"model": params.model, "messages": []}).status_code == 400
        too_long = chat_body(params.model, png_url(), max_tokens=5000)
        assert "maximum context length" in client.post("/v1/chat/completions", json=too_long).json()["error"]["message"]
        metrics = client.get("/metrics").text
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:request_success_total"):
            assert f"# TYPE {name}" in metrics
        stats = client.get("/sim/stats").json()
        assert stats["completed"] == 1 and stats["max_num_seqs"] == 4


def test_the_simulator_process_serves_the_pipelines_client(tmp_path):
    """The pipeline's model client, without Dagster, parses pages against the simulator started as a separate process."""
    from medkg_pdf.model_client import ModelClient, PageRecipe, PageRequest
    from medkg_pdf.schemas import PageStatus

    params = SimParams(max_num_seqs=4, step_base_s=0.001, step_per_seq_s=0.0, tokens=2, answer="# Dose\n\n500 mg")
    with Simulator(params) as sim:
        assert "ideal" in sim.banner
        before = sim.reset()
        client = ModelClient(url=sim.url, recipe=PageRecipe.for_model(params.model), max_concurrency=6)
        pages = [
            PageRequest(document_id="doc-0123456789", page_index=i, cache_key=f"k{i}", load_png=lambda i=i: make_png(40 + i, 40))
            for i in range(10)
        ]
        results = []
        stats = client.parse_pages(pages, results.append)
        delta = stats_delta(before, sim.stats())
    assert [r.status for r in results] == [PageStatus.ok] * 10
    assert all("500 mg" in r.markdown for r in results) and stats.model_calls == 10
    assert delta["completed"] == 10 and delta["window_s"] > 0 and 1 <= delta["mean_batch"] <= 4
