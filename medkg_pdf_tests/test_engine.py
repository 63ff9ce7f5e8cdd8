"""The embedded default engine, in three layers.

1. `lines_to_markdown`: the layout heuristics, on hand-made OCR lines (no model needed).
2. `OcrEngine`: the real RapidOCR model reading pages rendered by PyMuPDF.
3. The OpenAI-compatible server, run by uvicorn on a loopback port and spoken to over real HTTP,
   exactly as the pipeline's client speaks to vLLM.

The OCR model is loaded once for the module; every page is small, rendered at 150 DPI or at the
embedded profile's render target.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import time
from collections.abc import Iterator

import httpx
import pymupdf
import pytest
import uvicorn
from starlette.applications import Starlette

from medkg_pdf.engine.ocr import OcrEngine, OcrLine, OcrPage, lines_to_markdown
from medkg_pdf.engine.server import MAX_IMAGE_BYTES, create_app
from medkg_pdf.profiles import PROFILES

API_KEY = "test-key-5f2c9a"
MODEL = "medkg-embedded-ocr"
PROMPT = "Convert this page to markdown."

MEDICAL_LINES = [
    "Discharge medications",
    "Amoxicillin 500 mg every 8 hours for 7 days",
    "Metformin 1000 mg twice daily with meals",
    "Lisinopril 10 mg once daily",
    "Creatinine 1.4 mg/dL on admission",
    "Follow up in 2 weeks",
]


def line(text: str, x0: float, y0: float, x1: float, y1: float) -> OcrLine:
    return OcrLine(text=text, box=(x0, y0, x1, y1), score=0.99)


# --------------------------------------------------------------------------------------------------
# 1. Layout heuristics
# --------------------------------------------------------------------------------------------------


def test_two_columns_are_read_left_column_first_below_a_full_width_title():
    title = line("Antibiotic stewardship in adults", 250, 40, 750, 80)
    left = [line(f"left column line {i} about empirical therapy", 60, 120 + 30 * i, 470, 142 + 30 * i) for i in range(6)]
    right = [line(f"right column line {i} about renal dosing", 530, 120 + 30 * i, 940, 142 + 30 * i) for i in range(6)]
    # OCR returns lines row by row, left and right interleaved.
    interleaved = [title] + [piece for pair in zip(left, right) for piece in pair]

    markdown = lines_to_markdown(interleaved, 1000, 1300)

    positions = [markdown.index(piece.text) for piece in [title, *left, *right]]
    assert positions == sorted(positions), markdown
    assert markdown.startswith("# Antibiotic stewardship in adults")


def test_aligned_cells_become_a_pipe_table():
    rows = [("Drug", "Dose", "Frequency"), ("Amoxicillin", "500 mg", "every 8 hours"), ("Metformin", "1000 mg", "twice daily")]
    lines = [line("Medications given at discharge are listed below.", 100, 40, 900, 62)]
    for r, cells in enumerate(rows):
        top = 100 + 36 * r
        lines += [line(cells[0], 100, top, 230, top + 22), line(cells[1], 420, top, 500, top + 22), line(cells[2], 700, top, 860, top + 22)]

    markdown = lines_to_markdown(lines, 1000, 400)

    assert markdown == (
        "Medications given at discharge are listed below.\n\n"
        "| Drug | Dose | Frequency |\n"
        "|---|---|---|\n"
        "| Amoxicillin | 500 mg | every 8 hours |\n"
        "| Metformin | 1000 mg | twice daily |"
    )


def test_clearly_taller_lines_become_headings_largest_first():
    lines = [
        line("Discharge Summary", 100, 40, 600, 84),  # twice the body height
        line("Hospital course", 100, 120, 400, 150),  # 1.4 times
        line("The patient was admitted with pneumonia and treated with", 100, 170, 900, 192),
        line("intravenous ceftriaxone, then oral amoxicillin.", 100, 198, 760, 220),
    ]

    markdown = lines_to_markdown(lines, 1000, 400)

    assert markdown.split("\n\n") == [
        "# Discharge Summary",
        "## Hospital course",
        "The patient was admitted with pneumonia and treated with intravenous ceftriaxone, then oral amoxicillin.",
    ]


def test_wide_gaps_and_short_lines_end_paragraphs():
    lines = [
        line("Renal function was monitored daily and remained stable throughout", 100, 100, 900, 122),
        line("the admission.", 100, 128, 280, 150),
        line("Creatinine peaked at 1.4 mg/dL on day two and returned to baseline", 100, 190, 900, 212),
        line("before discharge.", 100, 218, 320, 240),
    ]

    assert lines_to_markdown(lines, 1000, 400).split("\n\n") == [
        "Renal function was monitored daily and remained stable throughout the admission.",
        "Creatinine peaked at 1.4 mg/dL on day two and returned to baseline before discharge.",
    ]


def test_bullets_and_numbers_become_list_items():
    lines = [
        line("• Take all antibiotics until finished.", 120, 100, 600, 122),
        line("- Return if fever above 38.5 C.", 120, 130, 560, 152),
        line("1. Check blood glucose daily.", 120, 190, 520, 212),
        line("2. Repeat chest x-ray in 6 weeks.", 120, 220, 580, 242),
    ]

    assert lines_to_markdown(lines, 1000, 400).split("\n\n") == [
        "- Take all antibiotics until finished.\n- Return if fever above 38.5 C.",
        "1. Check blood glucose daily.\n2. Repeat chest x-ray in 6 weeks.",
    ]


def test_no_lines_give_empty_markdown():
    assert lines_to_markdown([], 1000, 1000) == ""
    assert lines_to_markdown([line("   ", 0, 0, 10, 10)], 1000, 1000) == ""


# --------------------------------------------------------------------------------------------------
# 2. The real OCR model
# --------------------------------------------------------------------------------------------------


def render(texts: list[str], *, width: float = 612, height: float = 792, **pixmap_options) -> bytes:
    """PNG of a page with one line of 11 pt text per entry, at 150 DPI like the pipeline."""
    document = pymupdf.open()
    page = document.new_page(width=width, height=height)
    for index, text in enumerate(texts):
        page.insert_text((40, 30 + 18 * index), text, fontsize=11)
    return page.get_pixmap(dpi=150, **pixmap_options).tobytes("png")


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    ocr = OcrEngine()
    ocr.load()
    return ocr


@pytest.fixture(scope="module")
def medical_png() -> bytes:
    return render(MEDICAL_LINES)


@pytest.fixture(scope="module")
def medical_page(engine: OcrEngine, medical_png: bytes) -> OcrPage:
    return engine.to_markdown(medical_png)


@pytest.fixture(scope="module")
def one_line_png() -> bytes:
    """A small image (one text line) for requests that need a real but fast recognition."""
    return render(["Lisinopril 10 mg once daily, potassium 4.2 mmol/L"], width=360, height=50)


def test_ocr_reads_medical_words_and_numbers(medical_page: OcrPage):
    assert (medical_page.width, medical_page.height) == (1275, 1650)  # letter at 150 DPI
    for expected in ["Amoxicillin 500 mg every 8 hours", "Metformin 1000 mg", "Lisinopril 10 mg", "1.4 mg/dL"]:
        assert expected in medical_page.markdown
    amoxicillin = next(found for found in medical_page.lines if "Amoxicillin" in found.text)
    x0, y0, x1, y1 = amoxicillin.box
    assert 0 <= x0 < x1 <= 1275 and 0 <= y0 < y1 <= 1650 and amoxicillin.score > 0.8


def test_blank_page_gives_no_lines_and_empty_markdown(engine: OcrEngine):
    page = engine.to_markdown(render([]))
    assert page.lines == [] and page.markdown == ""


@pytest.mark.parametrize("options", [{"alpha": True}, {"colorspace": pymupdf.csGRAY}], ids=["rgba", "grayscale"])
def test_rgba_and_grayscale_pngs_are_read(engine: OcrEngine, options: dict):
    png = render(["Lisinopril 10 mg once daily"], width=300, height=40, **options)
    assert [found.text for found in engine.recognize(png)] == ["Lisinopril 10 mg once daily"]


def render_strip(lines: list[tuple[str, str, float]]) -> bytes:
    """PNG of the top of a letter page holding (text, font, size) lines, drawn at the scale the
    pipeline draws pages for the embedded engine (only the strip is rendered, to keep the test fast)."""
    document = pymupdf.open()
    page = document.new_page(width=612, height=792)
    y = 40.0
    for text, font, size in lines:
        y += size * 1.6
        page.insert_text((72, y), text, fontname=font, fontsize=size)
    scale = PROFILES["embedded-ocr"].render_target().scale(page.rect.width, page.rect.height)
    return page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), clip=pymupdf.Rect(0, 20, 612, y + 14)).tobytes("png")


def test_large_bold_headings_keep_their_word_spaces(engine: OcrEngine):
    """The recogniser runs bold capitals together ("DISCHARGESUMMARY"); the spaces come back from the
    blank gaps between the characters it read."""
    headings = [("DISCHARGE SUMMARY", 12), ("AMOXICILLIN CAPSULES, USP", 18), ("DOSAGE AND ADMINISTRATION", 11),
                ("ADVERSE REACTIONS", 11), ("INDICATIONS AND USAGE", 11), ("SECONDARY DIAGNOSES", 10.5),
                ("DISCHARGE MEDICATIONS", 10.5), ("RIVERSIDE UNIVERSITY HOSPITAL", 13), ("PRINCIPAL DIAGNOSIS", 10.5),
                ("HOSPITAL COURSE", 10.5)]
    png = render_strip([(text, "hebo", size) for text, size in headings])  # Helvetica Bold
    assert [found.text for found in engine.recognize(png)] == [text for text, _size in headings]


def test_numbers_run_together_are_separated_and_decimals_and_times_stay_whole(engine: OcrEngine):
    """A date run into the time ("202506:00") loses two numbers from numeric recall; the gap puts the
    space back, while the narrow gaps inside "1.73", "14:32" and "11.0" get none."""
    png = render_strip([("Collected 01/05/2025 06:00", "hebo", 10), ("Table 1. Dosage for Adults Older than 3 Months", "hebo", 9),
                        ("eGFR 52 mL/min/1.73 m2, WBC 11.2 x10^9/L (ref 4.0-11.0) at 14:32", "helv", 9.5)])
    texts = [found.text for found in engine.recognize(png)]
    assert texts[:2] == ["Collected 01/05/2025 06:00", "Table 1. Dosage for Adults Older than 3 Months"]
    assert all(number in texts[2] for number in ["1.73", "11.2", "4.0-11.0", "14:32"])


# --------------------------------------------------------------------------------------------------
# 3. The OpenAI-compatible server over real HTTP
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(app: Starlette) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a background thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, name="engine-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def base_url(engine: OcrEngine) -> Iterator[str]:
    app = create_app(lambda png: engine.to_markdown(png).markdown, model_name=MODEL, api_key=API_KEY)
    with running(app) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        yield http


def chat_body(image_url: str | None, **extra) -> dict:
    content: list[dict] = [{"type": "text", "text": PROMPT}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0.0, "seed": 42, **extra}


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error"
    assert body["error"]["type"] == error_type and body["error"]["code"] == status
    return body["error"]["message"]


def test_health_answers_200_with_an_empty_body_and_no_key(base_url: str):
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200 and response.content == b""


def test_models_lists_the_served_model_with_its_context_length(client: httpx.Client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    (card,) = response.json()["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["root"] == MODEL
    assert card["owned_by"] == "medkg-pdf" and card["max_model_len"] == 8192


def test_chat_completion_returns_the_page_as_markdown(client: httpx.Client, medical_png: bytes):
    response = client.post("/v1/chat/completions", json=chat_body(data_url(medical_png), max_tokens=4096))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion" and answer["model"] == MODEL
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert "Amoxicillin 500 mg every 8 hours" in content and "Metformin 1000 mg" in content
    usage = answer["usage"]
    assert usage["prompt_tokens"] == math.ceil(len(PROMPT) / 4) + math.ceil(1275 * 1650 / (28 * 28))
    assert usage["completion_tokens"] == math.ceil(len(content) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_tiny_max_tokens_cuts_the_answer_with_finish_reason_length(client: httpx.Client, one_line_png: bytes):
    answer = client.post("/v1/chat/completions", json=chat_body(data_url(one_line_png), max_tokens=3)).json()
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "Lisinopril 1"  # 3 tokens of 4 characters
    assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {API_KEY}"], ids=["missing", "wrong", "not-bearer"])
def test_a_missing_or_wrong_key_is_401_and_the_key_is_never_echoed(base_url: str, one_line_png: bytes, header: str | None):
    headers = {"Authorization": header} if header else {}
    for response in (
        httpx.get(f"{base_url}/v1/models", headers=headers),
        httpx.post(f"{base_url}/v1/chat/completions", headers=headers, json=chat_body(data_url(one_line_png))),
    ):
        assert_openai_error(response, 401, "AuthenticationError")
        assert API_KEY not in response.text and "wrong-key" not in response.text


def test_another_model_name_is_404_naming_the_served_model(client: httpx.Client, one_line_png: bytes):
    body = chat_body(data_url(one_line_png)) | {"model": "Qwen/Qwen2.5-VL-7B-Instruct"}
    message = assert_openai_error(client.post("/v1/chat/completions", json=body), 404, "NotFoundError")
    assert MODEL in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "JSON"),
        ({"model": MODEL, "messages": []}, "messages"),
        (chat_body(None), "no image"),
        (chat_body(data_url(b"just some text, not an image")), "not a PNG or JPEG"),
        (chat_body("data:image/png;base64,***not base64***"), "base64"),
        (chat_body(data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE_BYTES)), "10 MB"),
        (chat_body("https://example.org/page.png"), "offline"),
        (chat_body("data:image/png;base64,AAAA", max_tokens=0), "max_tokens"),
    ],
    ids=["invalid-json", "no-messages", "no-image", "not-an-image", "bad-base64", "oversized-image", "http-url", "max-tokens-0"],
)
def test_bad_requests_are_400_with_a_clear_message(client: httpx.Client, body, says: str):
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/chat/completions", json=body)
    assert says in assert_openai_error(response, 400, "BadRequestError")


def test_a_corrupt_png_with_a_valid_header_is_400(client: httpx.Client, one_line_png: bytes):
    truncated = one_line_png[:60] + b"\0" * 200
    message = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(data_url(truncated))), 400, "BadRequestError")
    assert "invalid image" in message


def test_metrics_use_vllm_names(client: httpx.Client, one_line_png: bytes):
    assert client.post("/v1/chat/completions", json=chat_body(data_url(one_line_png))).status_code == 200

    metrics = client.get("/metrics").text

    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in metrics
    assert f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0' in metrics
    for counter in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total"):
        assert counter in metrics
    assert 'finished_reason="stop"' in metrics


def test_recognition_runs_in_bounded_worker_threads_and_never_blocks_the_event_loop(one_line_png: bytes):
    """With one worker, a second page waits (and says so in /metrics) while /health stays instant."""
    release = threading.Event()

    def slow_recognize(png: bytes) -> str:
        release.wait(timeout=20)
        return "# Page"

    def gauges(url: str) -> tuple[str, str]:
        text = httpx.get(f"{url}/metrics").text
        value = {name: line.rsplit(" ", 1)[1] for line in text.splitlines() for name in ("running", "waiting") if line.startswith(f"vllm:num_requests_{name}{{")}
        return value["running"], value["waiting"]

    with running(create_app(slow_recognize, max_concurrency=1)) as url:
        answers: list[httpx.Response] = []
        posters = [
            threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/chat/completions", json=chat_body(data_url(one_line_png)), timeout=30)))
            for _ in range(2)
        ]
        for poster in posters:
            poster.start()
        deadline = time.monotonic() + 10
        while gauges(url) != ("1.0", "1.0"):
            assert time.monotonic() < deadline, gauges(url)
            time.sleep(0.02)
        started = time.monotonic()
        assert httpx.get(f"{url}/health").status_code == 200
        assert time.monotonic() - started < 1.0
        release.set()
        for poster in posters:
            poster.join(timeout=20)
        assert [answer.status_code for answer in answers] == [200, 200]
        assert [answer.json()["choices"][0]["message"]["content"] for answer in answers] == ["# Page", "# Page"]
        assert gauges(url) == ("0.0", "0.0")
