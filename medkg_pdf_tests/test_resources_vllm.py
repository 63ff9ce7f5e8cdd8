"""The model server client, against a real HTTP server that misbehaves on purpose."""

import logging
import threading
import time

import pytest

from medkg_pdf.model_client.breaker import BreakerOpenError, BreakerState, CircuitBreaker
from medkg_pdf.resources.vllm import (
    FatalRequestError,
    ModelNotServedError,
    PageRequest,
    ServerUnavailableError,
    VLLMResource,
    image_tokens,
    looks_repetitive,
)
from medkg_pdf.schemas import PageStatus
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble, make_png

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
SECRET = "sk-medkg-test-7f3a9c1d5e"
URL_PASSWORD = "pw-in-url-93b1e0"


def client(url: str, **settings) -> VLLMResource:
    base = dict(base_url=url, model=MODEL, backoff_initial_s=0.02, backoff_max_s=0.2, read_timeout_s=5, breaker_recovery_s=0.3)
    base.update(settings)
    return VLLMResource(**base)


def pages(n: int, size: int = 56) -> list[PageRequest]:
    """n distinct page images (each a different gray level)."""
    return [
        PageRequest(document_id="doc-0123456789", page_index=i, cache_key=f"k{i}", load_png=lambda i=i: make_png(size, size, i % 250))
        for i in range(n)
    ]


def parse(resource: VLLMResource, requests: list[PageRequest], logger=None):
    results = []
    stats = resource.parse_pages(requests, results.append, logger)
    return sorted(results, key=lambda r: r.page_index), stats


@pytest.fixture
def server():
    with VllmDouble(model=MODEL) as double:
        yield double


def test_pages_run_concurrently_within_the_bound(server):
    server.set_faults(Faults(latency_s=0.2))
    results, stats = parse(client(server.url, max_concurrency=4), pages(16))
    assert [r.status for r in results] == [PageStatus.ok] * 16
    assert server.max_in_flight == 4
    assert stats.model_calls == 16 and stats.summary()["latency_p95_s"] >= 0.2


def test_run_stats_sum_the_servers_token_usage(server):
    results, stats = parse(client(server.url, max_concurrency=4), pages(6))
    assert stats.prompt_tokens == sum(r.prompt_tokens for r in results) > 6  # the image and the prompt, per page
    assert stats.completion_tokens == sum(r.completion_tokens for r in results) > 0
    assert stats.summary()["tokens_per_s"] > 0


def test_requests_are_deterministic_and_recorded(server):
    results, _ = parse(client(server.url), pages(2))
    for body in server.request_bodies:
        assert body["temperature"] == 0.0 and body["seed"] == 42 and body["max_tokens"] == 4096
        assert body["model"] == MODEL
    assert results[0].sampling.seed == 42 and results[0].model == MODEL
    assert results[0].markdown.startswith("# Page")


def test_api_key_is_sent_as_bearer_and_never_logged(caplog):
    with VllmDouble(model=MODEL, api_key=SECRET, faults=Faults(script=["503"] * 6)) as double:
        with caplog.at_level(logging.DEBUG):
            results, _ = parse(client(double.url, api_key=SECRET), pages(3), logging.getLogger("test"))
        assert all(h.get("authorization") == f"Bearer {SECRET}" for h in double.last_headers)
    everything = caplog.text + repr(results) + "".join(r.model_dump_json() for r in results)
    assert SECRET not in everything


def test_wrong_api_key_fails_fast_and_says_what_to_fix():
    with VllmDouble(model=MODEL, api_key=SECRET) as double:
        with pytest.raises(FatalRequestError, match="MEDKG_VLLM_API_KEY") as caught:
            parse(client(double.url, api_key="wrong-key"), pages(2))
        assert double.requests == 0
    assert SECRET not in str(caught.value) and "wrong-key" not in str(caught.value)


def test_the_resource_repr_shows_neither_the_key_nor_a_password_in_the_url():
    resource = client(f"http://medkg:{URL_PASSWORD}@127.0.0.1:9", api_key=SECRET)
    shown = repr(resource) + str(resource)
    assert SECRET not in shown and URL_PASSWORD not in shown
    assert "base_url='http://127.0.0.1:9'" in shown and resource.shown_url == "http://127.0.0.1:9"


def test_a_password_in_the_server_url_never_reaches_errors_logs_or_results(server, caplog):
    with_password = server.url.replace("http://", f"http://medkg:{URL_PASSWORD}@")
    server.set_faults(Faults(script=["503", "500"]))
    with caplog.at_level(logging.DEBUG):
        results, _ = parse(client(with_password, max_attempts=1, max_concurrency=1), pages(3), logging.getLogger("url-test"))
    assert [r.status for r in results] == [PageStatus.http_error, PageStatus.http_error, PageStatus.ok]
    assert server.last_headers[-1]["authorization"].startswith("Basic ")  # the credentials are used, only not shown
    with VllmDouble(model=MODEL, api_key=SECRET) as locked, pytest.raises(FatalRequestError) as refused:
        parse(client(locked.url.replace("http://", f"http://medkg:{URL_PASSWORD}@")), pages(1))
    everything = caplog.text + str(refused.value) + "".join(r.model_dump_json() for r in results)
    assert "HTTP 503 from http://127.0.0.1" in everything and "model server http://127.0.0.1" in str(refused.value)
    assert URL_PASSWORD not in everything and "medkg:" not in everything


def test_down_server_fails_in_seconds_naming_url_and_model():
    with VllmDouble(model=MODEL) as double:
        url = double.url
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as caught:
        parse(client(url), pages(3))
    assert time.monotonic() - started < 10
    assert url in str(caught.value) and MODEL in str(caught.value)


def test_unhealthy_server_is_refused_before_page_work(server):
    server.set_faults(Faults(healthy=False))
    with pytest.raises(ServerUnavailableError, match="unhealthy"):
        parse(client(server.url), pages(2))
    assert server.requests == 0


def test_wrong_model_names_the_served_ones(server):
    with pytest.raises(ModelNotServedError, match="MEDKG_VLLM_MODEL") as caught:
        parse(client(server.url, model="Qwen/Qwen2-VL-2B"), pages(1))
    assert MODEL in str(caught.value)


def test_transient_faults_are_retried_until_every_page_is_ok(server):
    server.set_faults(Faults(error_503=0.05, error_500=0.02, reset=0.02, stall=0.01, stall_s=3, seed=7))
    results, stats = parse(client(server.url, read_timeout_s=1.0, max_concurrency=8, max_attempts=4), pages(50))
    assert [r.status for r in results] == [PageStatus.ok] * 50
    assert sum(server.ok_by_image.values()) >= 50
    assert stats.retries == sum(server.faults_injected.values())


def test_429_honours_retry_after(server):
    server.set_faults(Faults(script=["429"], retry_after_s=0.5))
    started = time.monotonic()
    results, stats = parse(client(server.url, max_concurrency=1), pages(1))
    assert results[0].status is PageStatus.ok and results[0].attempts == 2
    assert time.monotonic() - started >= 0.5
    assert stats.retries == 1


def test_a_retry_after_of_an_hour_costs_a_page_at_most_the_cap(server):
    server.set_faults(Faults(script=["429"], retry_after_s=3600))
    started = time.monotonic()
    results, _ = parse(client(server.url, max_concurrency=1, retry_after_max_s=0.3), pages(1))
    assert results[0].status is PageStatus.ok and results[0].attempts == 2
    assert 0.3 <= time.monotonic() - started < 10


def test_a_busy_server_answering_429_slows_pages_down_but_never_opens_the_breaker(server, caplog):
    server.set_faults(Faults(script=["429"] * 6, retry_after_s=0.01))  # more refusals in a row than the breaker allows failures
    with caplog.at_level(logging.INFO):
        results, stats = parse(client(server.url, max_concurrency=1, max_attempts=8), pages(3), logging.getLogger("busy"))
    assert [r.status for r in results] == [PageStatus.ok] * 3
    assert results[0].attempts == 7 and stats.breaker_trips == 0
    assert "open" not in caplog.text


def test_a_runaway_response_body_is_cut_off_while_it_is_read(server):
    server.set_faults(Faults(script=["endless"]))
    results, _ = parse(client(server.url, max_attempts=1), pages(1))
    assert results[0].status is PageStatus.invalid_response
    assert "over 8 MiB: not read further" in results[0].error
    assert server.endless_bytes_sent < 64 * 2**20  # the client hung up; it did not read the server's 256 MiB


def test_breaker_opens_after_five_failures_and_pages_with_no_wait_budget_fail_fast(server, caplog):
    server.set_faults(Faults(error_503=1.0))
    with caplog.at_level(logging.INFO):
        results, stats = parse(
            client(server.url, max_concurrency=1, page_wait_budget_s=0, breaker_recovery_s=60), pages(10), logging.getLogger("breaker-test")
        )
    statuses = [r.status for r in results]
    # no budget for any wait: each page tries once; five 503s open the breaker, the rest are refused at once
    assert statuses == [PageStatus.http_error] * 5 + [PageStatus.breaker_open] * 5
    assert server.requests == 5 and stats.breaker_trips == 1
    assert "circuit breaker closed -> open" in caplog.text
    assert "breaker open" in results[-1].error


def test_pages_queued_behind_an_open_breaker_wait_for_its_trial_call_and_end_ok(server, caplog):
    server.set_faults(Faults(script=["503"] * 5))  # a short outage: five failures open the breaker, then the server is fine
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        results, stats = parse(client(server.url, max_concurrency=1), pages(6), logging.getLogger("breaker-test"))
    # page 0 spends its three attempts; page 1's two failures open the breaker, then it waits for the trial call
    assert [r.status for r in results] == [PageStatus.http_error] + [PageStatus.ok] * 5
    assert stats.breaker_trips == 1 and time.monotonic() - started < 10
    assert "closed -> open" in caplog.text and "open -> half_open" in caplog.text and "half_open -> closed" in caplog.text


def test_an_outage_shorter_than_the_run_ends_with_the_breaker_closed_and_the_later_pages_ok(caplog):
    with VllmDouble(model=MODEL, faults=Faults(latency_s=0.05)) as double:

        def outage() -> None:
            deadline = time.monotonic() + 20
            while double.completions_ok < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            double.go_down()  # refused connections: failures of the server, as a crashed pod
            time.sleep(1.5)
            double.come_back()

        breaker_outage = threading.Thread(target=outage, daemon=True)
        breaker_outage.start()
        with caplog.at_level(logging.INFO):
            results, stats = parse(client(double.url, max_concurrency=2, page_wait_budget_s=30), pages(16), logging.getLogger("outage"))
        breaker_outage.join(timeout=30)
    statuses = [r.status for r in results]
    assert stats.breaker_trips >= 1 and "half_open -> closed" in caplog.text
    assert PageStatus.breaker_open not in statuses  # nobody gave up while the server was on its way back
    assert statuses[-6:] == [PageStatus.ok] * 6 and statuses.count(PageStatus.ok) >= 12


def test_one_breaker_per_server_url_is_shared_by_every_run_of_the_process(server):
    first, second = client(server.url).client(), client(server.url, max_concurrency=2).client()
    assert first.breaker is second.breaker
    with VllmDouble(model=MODEL) as other:
        assert client(other.url).client().breaker is not first.breaker


def test_the_breaker_half_open_lets_one_trial_call_through_at_a_time():
    now = [0.0]
    breaker = CircuitBreaker(recovery_s=10, clock=lambda: now[0])
    for _ in range(5):
        breaker.record_failure("boom")
    with pytest.raises(BreakerOpenError) as refused:
        breaker.before_call("http://x")
    assert refused.value.retry_after == 10
    now[0] = 10
    trial = breaker.before_call("http://x")
    with pytest.raises(BreakerOpenError, match="waiting for the trial call"):
        breaker.before_call("http://x")
    breaker.release(trial)  # e.g. the trial got a 429: neither success nor failure
    breaker.record_success(breaker.before_call("http://x"))
    breaker.record_success(breaker.before_call("http://x"))
    assert breaker.state is BreakerState.closed


def test_a_burst_of_429s_cuts_the_requests_in_flight_and_every_page_ends_ok(server):
    server.set_faults(Faults(script=["429"] * 4, retry_after_s=0.05, latency_s=0.05))
    results, stats = parse(client(server.url, max_concurrency=4), pages(12))
    assert [r.status for r in results] == [PageStatus.ok] * 12
    assert stats.rate_limited == 4 and stats.breaker_trips == 0
    assert stats.lowest_concurrency <= 2  # halved at least once: the busy server got fewer requests at once


def test_429_waits_spend_the_page_wait_budget_not_its_attempts(server):
    server.set_faults(Faults(rate_limit_429=1.0, retry_after_s=3600))
    started = time.monotonic()
    results, stats = parse(client(server.url, max_concurrency=1, retry_after_max_s=0.2, page_wait_budget_s=1.0), pages(1))
    elapsed = time.monotonic() - started
    assert results[0].status is PageStatus.http_error and "429" in results[0].error
    assert results[0].attempts > 3  # more tries than max_attempts: a 429 is no failure of the server
    assert 0.8 <= elapsed < 5 and stats.breaker_trips == 0  # and never more waiting than the budget


def test_garbage_bodies_are_invalid_responses_not_crashes(server):
    server.set_faults(Faults(script=["garbage", "bad_shape"]))
    results, _ = parse(client(server.url, max_concurrency=1), pages(3))
    assert [r.status for r in results] == [PageStatus.invalid_response, PageStatus.invalid_response, PageStatus.ok]
    assert "invalid response" in results[0].error


def test_a_truncated_answer_is_asked_once_more_with_the_same_deterministic_sampling():
    with VllmDouble(model=MODEL, answer=lambda png, body: ("Dose table " + "x" * 50, "length")) as double:
        results, _ = parse(client(double.url), pages(1))
        assert double.requests == 2
        assert double.request_bodies[1] == double.request_bodies[0]
    assert results[0].status is PageStatus.truncated
    assert results[0].sampling.frequency_penalty is None


def test_a_repetition_retry_carries_no_penalty_and_keeps_temperature_0_and_the_seed():
    calls = []

    def answer(png, body):
        calls.append(body)
        return ("Take 1 tablet. " * 80, "length") if len(calls) == 1 else ("Take 1 tablet daily.", "stop")

    with VllmDouble(model=MODEL, answer=answer) as double:
        results, _ = parse(client(double.url), pages(1))
        retry = double.request_bodies[1]
    assert results[0].status is PageStatus.ok and results[0].attempts == 2
    assert "repetition_penalty" not in retry and "frequency_penalty" not in retry and "presence_penalty" not in retry
    assert retry["temperature"] == 0.0 and retry["seed"] == 42
    assert results[0].sampling.repetition_penalty is None


def test_empty_answer_on_an_inked_page_is_a_failure_but_blank_pages_are_not_sent(server):
    server.answer = lambda png, body: ""
    requests = pages(2)
    requests[1] = PageRequest(document_id="doc-0123456789", page_index=1, cache_key="b", load_png=lambda: b"", blank=True)
    results, _ = parse(client(server.url), requests)
    assert [r.status for r in results] == [PageStatus.empty, PageStatus.blank]
    assert server.requests == 2  # asked twice: an empty answer is final only when it comes again
    assert results[0].attempts == 2


def test_images_are_downscaled_to_fit_the_context():
    with VllmDouble(model=MODEL, max_model_len=4096) as double:
        results, _ = parse(client(double.url, max_tokens=2048), pages(1, size=2000))
    assert results[0].status is PageStatus.ok
    assert image_tokens(results[0].image_width, results[0].image_height, 28) <= 4096 - 2048
    assert results[0].image_width < 2000


def test_a_context_too_small_for_any_image_fails_the_page_without_a_request(server):
    results, _ = parse(client(server.url, max_model_len=4100, max_tokens=4096), pages(1))
    assert results[0].status is PageStatus.context_overflow
    assert "max_tokens" in results[0].error and server.requests == 0


def test_the_repetition_detector_catches_loops_and_not_the_tables_and_forms_of_real_pages():
    assert looks_repetitive("Intro. " + "| 5 mg | 5 mg |" * 40)
    assert looks_repetitive("Take 1 tablet by mouth. " * 60)
    assert looks_repetitive("Intro.\n" + "<tr><td>5 mg</td><td>5 mg</td></tr>\n" * 40)
    label = "\n".join(f"Section {i}: amoxicillin {250 * i} mg every {4 + i} hours, review renal function on day {i}." for i in range(1, 12))
    ten_small_tables = "\n\n".join(f"Table {i}\n\n| Drug | Dose |\n|---|---|\n| D{i} | {5 * i} mg |" for i in range(10))
    empty_form = "| Drug | Dose | Signed |\n|---|---|---|\n" + "\n".join("|  |  |  |" for _ in range(30))
    html_form = "<table><tr><th>Drug</th><th>Dose</th></tr>" + "<tr><td></td><td></td></tr>" * 40 + "</table>"
    for legitimate in (label, ten_small_tables, empty_form, html_form):
        assert len(legitimate) > 300  # well past the detector's 120-character guard
        assert not looks_repetitive(legitimate), legitimate[:80]


def test_breaker_half_opens_after_recovery_and_closes_after_two_successes():
    now = [0.0]
    changes = []
    breaker = CircuitBreaker(clock=lambda: now[0])
    with breaker.watch(lambda old, new, why: changes.append(new)):
        for _ in range(5):
            breaker.record_failure("boom")
        assert breaker.state is BreakerState.open
        with pytest.raises(Exception, match="breaker open"):
            breaker.before_call("http://x")
        now[0] = 61
        breaker.before_call("http://x")
        assert breaker.state is BreakerState.half_open
        breaker.record_success()
        breaker.record_success()
    assert changes == [BreakerState.open, BreakerState.half_open, BreakerState.closed]


def test_a_repetitive_answer_is_accepted_only_when_the_pages_text_layer_holds_its_numbers_as_often():
    """The numbers are checked against the text layer, not penalised: 12 rows of '5 mg' on a page that
    has 12 are content; the same answer on a page with 3 (or with no usable text layer) is a loop."""
    answer = "Dosing\n" + "\n".join("| Warfarin | 5 mg | once daily |" for _ in range(12))
    layer_of = {0: "Dosing\n" + "Warfarin 5 mg once daily\n" * 12, 1: "Dosing\n" + "Warfarin 5 mg once daily\n" * 3, 2: None}
    requests = [
        PageRequest(document_id="doc-0123456789", page_index=i, cache_key=f"k{i}", load_png=lambda i=i: make_png(56, 56, i),
                    load_text_layer=lambda i=i: layer_of[i])  # fmt: skip
        for i in range(3)
    ]
    with VllmDouble(model=MODEL, answer=lambda png, body: answer) as double:
        results, _ = parse(client(double.url), requests)
    assert [r.status for r in results] == [PageStatus.ok, PageStatus.repetition, PageStatus.repetition]
    assert [r.attempts for r in results] == [1, 2, 2]
