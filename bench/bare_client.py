"""The least a client must do to get PDFs transcribed by a vLLM server: the baseline of bench/end_to_end.py.

`python -m bench.bare_client --url URL --model MODEL --in-flight 32 PDF...` renders every page of
every PDF with PyMuPDF at 150 DPI to an RGB PNG (OpenCV, like the pipeline) in one thread, streaming into a bounded queue (the
first request goes out as soon as the first page is rendered, like olmOCR), and posts each page as
an OpenAI chat completion (base64 PNG data URL + a short prompt, temperature 0, seed 42,
max_tokens 4096) with at most `--in-flight` requests in flight on one httpx.AsyncClient. It keeps
the answers in memory only. Exit 0 when every page was answered, 1 otherwise. Imports httpx,
pymupdf, OpenCV, numpy and the standard library, nothing of medkg_pdf.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pymupdf


def encode_png(pix: pymupdf.Pixmap) -> bytes:
    """The same encoding as the pipeline's (OpenCV, level 1, without the GIL), so both sides do the same work per page."""
    rgb = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()


PROMPT = "Transcribe this page of a medical document to markdown. Keep every number and unit exactly."
ZOOM = pymupdf.Matrix(150 / 72, 150 / 72)


def render(paths: list[str], queue: asyncio.Queue, loop: asyncio.AbstractEventLoop, failures: list[str]) -> None:
    """In a thread: every page as a data URL into `queue` (blocks while it is full), then None."""
    try:
        for path in paths:
            with pymupdf.open(path) as doc:
                for page in doc:
                    png = encode_png(page.get_pixmap(matrix=ZOOM, alpha=False, colorspace=pymupdf.csRGB))
                    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                    asyncio.run_coroutine_threadsafe(queue.put(url), loop).result()
    except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
        failures.append(f"render: {error!r}")
    finally:
        asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()


async def main(url: str, model: str, in_flight: int, paths: list[str]) -> int:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=in_flight)
    answers: list[str] = []
    failures: list[str] = []
    renderer = threading.Thread(target=render, args=(paths, queue, loop, failures), daemon=True)
    renderer.start()
    slots = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:

        async def post(image_url: str) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": PROMPT},
                ]}],
                "temperature": 0.0,
                "seed": 42,
                "max_tokens": 4096,
            }  # fmt: skip
            try:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                answers.append(response.json()["choices"][0]["message"]["content"])
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
                failures.append(repr(error))
            finally:
                slots.release()

        tasks = []
        while (image_url := await queue.get()) is not None:
            await slots.acquire()
            tasks.append(asyncio.create_task(post(image_url)))
        await asyncio.gather(*tasks)
    renderer.join()
    print(f"{len(answers)} pages answered, {len(failures)} failed", file=sys.stderr)
    for failure in failures[:5]:
        print(f"  {failure}", file=sys.stderr)
    return 1 if failures or not answers else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's base URL, without /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--in-flight", type=int, default=32, help="requests in flight at most (default 32)")
    parser.add_argument("pdfs", nargs="+")
    args = parser.parse_args()
    started = time.perf_counter()
    status = asyncio.run(main(args.url.rstrip("/"), args.model, args.in_flight, args.pdfs))
    print(f"{time.perf_counter() - started:.2f} s", file=sys.stderr)
    sys.exit(status)
