"""A page with its blocks' boxes drawn on, kind by colour: what the model located where.

OpenCV and numpy only (no matplotlib): the pipeline draws one per document for the Dagster UI.
"""

from __future__ import annotations

import numpy as np

from medkg_pdf.schemas import StructuredDocument

KIND_COLORS = {
    "heading": "#c44e52", "paragraph": "#4c72b0", "list": "#55a868", "table": "#dd8452",
    "caption": "#8172b2", "code": "#937860", "figure": "#da8bc3",
    "page_header": "#8c8c8c", "page_footer": "#8c8c8c", "page_number": "#8c8c8c",
}  # fmt: skip
KIND_NAMES = {"#c44e52": "red", "#4c72b0": "blue", "#55a868": "green", "#dd8452": "orange", "#8172b2": "purple",
              "#937860": "brown", "#da8bc3": "pink", "#8c8c8c": "grey"}  # fmt: skip
PREVIEW_WIDTH = 560  # px: the UI's preview of a page shows the boxes; it is stored with every materialization


def boxed_page_jpeg(document: StructuredDocument, page: int, page_png: bytes, dpi: float) -> bytes | None:
    """The page with each block's box in its kind's colour, as a small JPEG (tens of kB); None without boxes."""
    import cv2

    blocks = [block for block in document.blocks() if block.page == page and block.bbox is not None]
    if not blocks:
        return None
    image = cv2.imdecode(np.frombuffer(page_png, np.uint8), cv2.IMREAD_COLOR)
    shrink = min(1.0, PREVIEW_WIDTH / image.shape[1])
    image = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    scale = dpi / 72 * shrink  # bbox in PDF points (origin top-left), the image at `dpi`, then shrunk
    for block in blocks:
        red, green, blue = (int(KIND_COLORS.get(block.kind, "#000000")[i : i + 2], 16) for i in (1, 3, 5))
        x0, y0, x1, y1 = (round(value * scale) for value in block.bbox)
        cv2.rectangle(image, (x0, y0), (x1, y1), (blue, green, red), 2)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()
