"""The vLLM test double does what it claims, over real HTTP with httpx."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

try:
    from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble, make_png
except ImportError:  # collected by plain `pytest` with rootdir-relative imports
    from support.vllm_double import Faults, VllmDouble, make_png

pytestmark = pytest.mark.timeout(30)

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CHAT = "/v1/chat/completions"


def chat_body(png: bytes, model: str = MODEL, **sampling) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "To markdown."}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **sampling}


def client(double: VllmDouble, read: float = 5.0, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=double.url, timeout=httpx.Timeout(5.0, read=read), **kwargs)


@pytest.fixture
def png() -> bytes:
    return make_png(56, 84, fill=7)


def test_endpoints_and_default_answer(png):
    with VllmDouble(max_model_len=4096) as double, client(double) as http:
        assert double.url.startswith("http://127.0.0.1:")
        health = http.get("/health")
        assert health.status_code == 200 and health.content == b""

        models = http.get("/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [(MODEL, "model", 4096)]

        response = http.post(CHAT, json=chat_body(png, temperature=0.0, seed=7, max_tokens=256))
        assert response.status_code == 200
        payload = response.json()
        digest = hashlib.sha256(png).hexdigest()
        assert payload["object"] == "chat.completion" and payload["model"] == MODEL
        choice = payload["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": f"# Page\n\nImage sha256 {digest[:12]}", "tool_calls": []}
        assert choice["finish_reason"] == "stop"
        usage = payload["usage"]
        assert usage["prompt_tokens"] >= 2 * 3  # a 56 x 84 image is 2 x 3 tiles of 28 px
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

        # a second, different page gets a different answer
        other = http.post(CHAT, json=chat_body(make_png(56, 84, fill=8), max_tokens=256)).json()
        assert other["choices"][0]["message"]["content"] != choice["message"]["content"]

        assert double.requests == 2 and double.completions_ok == 2
        assert double.ok_by_image[digest] == 1 and len(double.ok_by_image) == 2
        body = double.request_bodies[0]
        assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 7, 256)
        assert base64.b64encode(png).decode() not in json.dumps(body)  # image data redacted

        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
        assert {"vllm:num_requests_running", "vllm:num_requests_waiting"} <= set(families)


def test_request_validation(png):
    with VllmDouble(max_model_len=1024) as double, client(double) as http:
        unknown = http.post(CHAT, json=chat_body(png, model="other/model"))
        assert unknown.status_code == 404 and unknown.json()["object"] == "error"

        no_image = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
        assert http.post(CHAT, json=no_image).status_code == 400

        not_image = chat_body(png)
        not_image["messages"][0]["content"][0]["image_url"]["url"] = "data:image/png;base64," + base64.b64encode(b"%PDF-1.7").decode()
        assert http.post(CHAT, json=not_image).status_code == 400

        too_long = http.post(CHAT, json=chat_body(png, max_tokens=1024))
        assert too_long.status_code == 400 and "maximum context length is 1024" in too_long.json()["error"]["message"]
        assert double.completions_ok == 0 and double.errors == {404: 1, 400: 3}


def test_answer_callback_finish_reason_and_truncation(png):
    answers = iter([("# cut", "length"), "x" * 400])
    with VllmDouble(answer=lambda image, request: next(answers)) as double, client(double) as http:
        first = http.post(CHAT, json=chat_body(png, max_tokens=64)).json()["choices"][0]
        assert (first["message"]["content"], first["finish_reason"]) == ("# cut", "length")
        second = http.post(CHAT, json=chat_body(png, max_tokens=10)).json()  # 400 chars ~ 100 tokens > 10
        assert second["choices"][0]["finish_reason"] == "length"
        assert second["usage"]["completion_tokens"] == 10


def test_api_key_is_required_as_bearer_and_never_echoed(png):
    key = "sk-secret-key-123"
    with VllmDouble(api_key=key) as double:
        with client(double) as anonymous:
            denied = anonymous.post(CHAT, json=chat_body(png))
            assert denied.status_code == 401
            error = denied.json()
            assert error["object"] == "error" and set(error["error"]) >= {"message", "type", "code"}
            assert anonymous.get("/v1/models").status_code == 401
            assert anonymous.get("/health").status_code == 200  # like vLLM: health is not behind the key
        with client(double, headers={"Authorization": "Bearer wrong-key"}) as wrong:
            denied = wrong.post(CHAT, json=chat_body(png))
            assert denied.status_code == 401
            assert key not in denied.text and "wrong-key" not in denied.text
        with client(double, headers={"Authorization": f"Bearer {key}"}) as good:
            assert good.post(CHAT, json=chat_body(png)).status_code == 200
        assert double.last_headers[-1]["authorization"] == f"Bearer {key}"
        assert double.completions_ok == 1 and double.errors[401] == 2


def test_script_order_and_http_faults(png):
    script = ["503", "500", "429", "garbage", "bad_shape", "ok"]
    with VllmDouble(faults=Faults(script=script, retry_after_s=2)) as double, client(double) as http:
        responses = [http.post(CHAT, json=chat_body(png)) for _ in script]
        assert [r.status_code for r in responses] == [503, 500, 429, 200, 200, 200]
        assert responses[0].json()["error"]["code"] == 503
        assert responses[2].headers["retry-after"] == "2"
        with pytest.raises(ValueError):
            responses[3].json()
        assert "choices" not in responses[4].json()
        assert responses[5].json()["choices"][0]["finish_reason"] == "stop"
        assert double.faults_injected == {"error_503": 1, "error_500": 1, "rate_limit_429": 1, "garbage": 1, "bad_shape": 1}
        assert double.completions_ok == 1 and double.requests == 6 and double.script_remaining == []


def test_reset_is_a_transport_error_and_the_next_request_works(png):
    with VllmDouble(faults=Faults(script=["reset"])) as double, client(double) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            http.post(CHAT, json=chat_body(png))
        assert http.post(CHAT, json=chat_body(png)).status_code == 200
        assert double.faults_injected["reset"] == 1 and double.completions_ok == 1


def test_stall_times_out_and_stop_wakes_it(png):
    double = VllmDouble(faults=Faults(stall=1.0, stall_s=5)).start()
    try:
        with client(double, read=0.5) as http:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                http.post(CHAT, json=chat_body(png))
            assert time.monotonic() - started < 2.0

        outcome: list[object] = []

        def patient() -> None:
            with client(double, read=10.0) as http:
                try:
                    outcome.append(http.post(CHAT, json=chat_body(png)))
                except httpx.TransportError as error:
                    outcome.append(error)

        waiter = threading.Thread(target=patient, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 3.0
        while double.faults_injected["stall"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert double.faults_injected["stall"] == 2
    finally:
        stopped = time.monotonic()
        double.stop()
    waiter.join(timeout=3.0)
    assert not waiter.is_alive() and time.monotonic() - stopped < 2.0
    assert isinstance(outcome[0], httpx.TransportError)  # dropped, not answered
    assert double.completions_ok == 0


def test_outage_refuses_connections_then_recovers_on_the_same_url(png):
    with VllmDouble() as double, client(double) as http:
        url = double.url
        assert http.post(CHAT, json=chat_body(png)).status_code == 200  # a pooled keep-alive connection
        double.go_down()
        assert not double.is_up
        for _ in range(2):  # the pooled connection was severed too; a new one is refused
            with pytest.raises(httpx.ConnectError):
                http.get("/health")
        double.come_back()
        assert double.url == url
        assert http.get("/health").status_code == 200
        assert http.post(CHAT, json=chat_body(png)).status_code == 200
        assert double.completions_ok == 2


def test_max_in_flight_sees_concurrent_requests(png):
    with VllmDouble(faults=Faults(latency_s=0.5)) as double:
        def one(i: int) -> int:
            with client(double) as http:
                return http.post(CHAT, json=chat_body(make_png(28, 28, fill=i))).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(one, range(4)))
        assert codes == [200] * 4
        assert time.monotonic() - started < 1.5  # concurrent, not 4 x 0.5 s
        # a handler leaves the in-flight count just after its answer is on the wire: wait for it (bounded)
        deadline = time.monotonic() + 2
        while double.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert double.max_in_flight == 4 and double.in_flight == 0
        assert sorted(double.ok_by_image.values()) == [1, 1, 1, 1]


def test_probabilities_are_reproducible_per_seed(png):
    def statuses(seed: int) -> list[int]:
        with VllmDouble(faults=Faults(error_503=0.3, rate_limit_429=0.2, seed=seed)) as double, client(double) as http:
            return [http.post(CHAT, json=chat_body(png)).status_code for _ in range(20)]

    first = statuses(3)
    assert first == statuses(3)
    assert {200, 503, 429} == set(first)
    with pytest.raises(ValueError):
        Faults(error_500=0.7, error_503=0.7)
    with pytest.raises(ValueError):
        Faults(script=["boom"])


def test_health_and_model_list_flags_change_at_runtime(png):
    with VllmDouble() as double, client(double) as http:
        double.set_faults(Faults(healthy=False, models=["some/other-model"]))
        assert http.get("/health").status_code == 503
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["some/other-model"]
        assert http.post(CHAT, json=chat_body(png)).status_code == 404
        double.set_faults(Faults())
        assert http.get("/health").status_code == 200
        assert http.post(CHAT, json=chat_body(png)).status_code == 200
