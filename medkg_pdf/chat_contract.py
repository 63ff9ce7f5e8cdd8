"""The OpenAI chat contract as this project speaks it, in one place for the client and all three servers.

The client (`medkg_pdf.model_client`), the embedded engine (`engine/server.py`), the test double
(`medkg_pdf_tests/support/vllm_double.py`) and the bench simulator (`bench/simulator.py`) must agree on how
a page travels (one base64 PNG data URL plus a text prompt), how big it is and what it costs in
tokens; when each kept its own copy they drifted. No Dagster, no HTTP: plain functions.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

EMBEDDED_MODEL = "medkg-embedded-ocr"  # what the embedded engine serves, as in GET /v1/models

PATCH_PX = 28  # Qwen2.5-VL: one image token per 28 x 28 px tile (14 px patches merged 2 x 2)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class ChatContractError(ValueError):
    """A request breaks the contract; strict readers (the engine) answer it with HTTP 400."""


# ----- images ------------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding a pixel: sizing must not cost a decode."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise ChatContractError("not a PNG, or a truncated PNG header")
    return struct.unpack(">II", data[16:24])


def image_tokens(width: int, height: int, patch_px: int = PATCH_PX) -> int:
    """Whole tiles per side, as vLLM's processor counts them; the client fits the context with this."""
    return math.ceil(width / patch_px) * math.ceil(height / patch_px)


def image_tokens_by_area(width: int, height: int, patch_px: int = PATCH_PX) -> int:
    """The embedded engine's cheaper estimate (pixels / patch area); its reported usage is pinned to it."""
    return math.ceil(width * height / (patch_px * patch_px))


# ----- data URLs ---------------------------------------------------------------------------------


def png_data_url(png: bytes) -> str:
    """Pages travel inline: the servers never fetch URLs (the embedded engine runs offline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def data_url_payload(url: Any) -> str | None:
    """The base64 payload of a `data:image/...;base64,` URL, or None for anything else.

    Scheme and media type compare case-insensitively (RFC 2397); the payload is not decoded here,
    because the servers decode differently (all of it, or only the header for speed).
    """
    if not isinstance(url, str):
        return None
    header, comma, payload = url.partition(",")
    header = header.lower()
    if not comma or not header.startswith("data:image/") or not header.endswith(";base64"):
        return None
    return payload


# ----- messages ----------------------------------------------------------------------------------


def page_messages(png: bytes, prompt: str) -> list[dict[str, Any]]:
    """One user turn: the page image first, then the prompt (the order vLLM's chat templates expect)."""
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": png_data_url(png)}}, {"type": "text", "text": prompt}],
        }
    ]


def read_messages(messages: Any, *, strict: bool = False) -> tuple[list[str], list[Any]]:
    """(text parts, image URLs) of an OpenAI messages list.

    `strict` (the engine, which mimics vLLM's validation) raises ChatContractError on a bad role,
    content or part; otherwise (the test double, the simulator) what cannot be read is skipped.
    """

    def reject(message: str) -> None:
        if strict:
            raise ChatContractError(message)

    if not isinstance(messages, list) or not messages:
        reject("messages must be a non-empty list")
        return [], []
    texts: list[str] = []
    urls: list[Any] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or (strict and message.get("role") not in ROLES):
            reject(f"messages[{index}] must be an object with a role in {sorted(ROLES)}")
            continue
        content = message.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            reject(f"messages[{index}].content must be a string or a list of parts")
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and (not strict or isinstance(part.get("text"), str)):
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                value = part.get("image_url")
                urls.append(value.get("url") if isinstance(value, dict) else value)
            else:
                reject(f"messages[{index}]: unsupported content part {kind!r}; this engine reads 'text' and 'image_url' parts")
    return texts, urls


def first_image_url(messages: Any) -> tuple[Any, int]:
    """(the first image URL, characters of text): all a lenient server needs for its token count."""
    texts, urls = read_messages(messages)
    return next((url for url in urls if url is not None), None), sum(map(len, texts))
