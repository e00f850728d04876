"""The OCR engine: RapidOCR (PP-OCRv4 detection + recognition, Chinese and English) on CPU.

``rapidocr-onnxruntime`` ships its ONNX models inside its wheel, so reading needs no network
and no download at run time. The engine is loaded once per process (about a second) and
kept; :func:`read_png` is what worker processes run.

Settings chosen for rendered posters rather than scanned pages (measured on simulator
images, one core): the text-angle classifier is off (rendered text is upright; it costs
~15 % and flips nothing here), and the detector scales the image's *longer* side down to
:data:`DETECT_SIDE` pixels instead of scaling its shorter side up to 736 — 0.16 s instead of
0.6 s on a 512² image, the same words read. Each process uses one ONNX thread: parallelism
comes from the worker processes.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from qwbatch.core.errors import ImageError

log = logging.getLogger(__name__)

#: The detector's input: the image's longer side scaled to at most this many pixels.
DETECT_SIDE = 960
#: Recognised lines scoring below this (0…1) are dropped as noise.
MIN_SCORE = 0.5

_ENGINE: Any = None


def load() -> Any:
    """The process's engine, built on first use (the models load in about a second)."""
    global _ENGINE  # one engine per process is the point
    if _ENGINE is None:
        # Imported here: the engine pulls in onnxruntime and OpenCV (~0.5 s), which a run
        # without text checks never needs.
        from rapidocr_onnxruntime import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        _ENGINE = RapidOCR(
            use_cls=False,
            det_limit_type="max",
            det_limit_side_len=DETECT_SIDE,
            intra_op_num_threads=1,
            inter_op_num_threads=1,
            text_score=MIN_SCORE,
        )
    return _ENGINE


def read_png(data: bytes) -> str:
    """The text on an encoded image, one line per text box, top to bottom.

    ImageError when the bytes are not an image Pillow can decode.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read the image's text: {exc}") from exc
    # RapidOCR works in OpenCV's BGR order.
    lines, _ = load()(np.ascontiguousarray(pixels[:, :, ::-1]))
    if not lines:
        return ""
    ordered = sorted(lines, key=lambda line: (line[0][0][1], line[0][0][0]))
    return "\n".join(str(line[1]) for line in ordered)
