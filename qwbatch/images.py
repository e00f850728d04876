"""Pillow helpers: output verification, hashing and thumbnails.

Later: input checks and normalisation for edits. Every failure here is an ``ImageError``
whose message says what was wrong with the bytes.

Decoding untrusted bytes is bounded two ways: only the formats in ``formats`` are tried (so
Pillow never hands a file to an external decoder such as Ghostscript), and images over
``max_pixels`` are refused before their pixels are decoded. Pillow's own global
``Image.MAX_IMAGE_PIXELS`` is left alone; its ``DecompressionBombWarning`` and ``…Error``
count as failures too.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from qwbatch.errors import ImageError

#: Largest image accepted, in pixels (width × height). Qwen-Image outputs stay under 4.2 MP.
DEFAULT_MAX_PIXELS = 40_000_000
#: Pillow format names accepted by default.
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")

# What Pillow raises on bytes it cannot decode (it uses several builtin types for this).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised, not just shown, when warnings are errors
)


#: Longest side of a stored thumbnail, in pixels.
THUMBNAIL_MAX_SIDE = 256
#: WebP quality of thumbnails (0–100): small files, still fine for judging a picture.
THUMBNAIL_QUALITY = 80

#: Pillow format name → the Content-Type to store it with.
MIME_TYPES: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A verified image.

    ``format`` is Pillow's name (``"PNG"``), ``width`` and ``height`` are in pixels,
    ``sha256`` is the hex digest of the encoded bytes and ``bytes`` their length (named as
    the catalog's column).
    """

    format: str
    width: int
    height: int
    sha256: str
    bytes: int

    @property
    def content_type(self) -> str:
        """The MIME type to store this image with (``image/png`` …)."""
        return MIME_TYPES.get(self.format, f"image/{self.format.lower()}")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lower-case hex digits."""
    return hashlib.sha256(data).hexdigest()


def verify_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> ImageInfo:
    """Fully decode ``data`` and describe it; ImageError if it is not a sound image.

    Checks, in order: the bytes are one of ``formats``; width × height is at most
    ``max_pixels``; the file's structure verifies (PNG chunk CRCs, a complete stream); and
    every pixel decodes (a truncated download fails here).
    """
    if not data:
        raise ImageError("not an image: no bytes")
    fmt, width, height = _open_and_load(data, max_pixels=max_pixels, formats=formats)
    return ImageInfo(
        format=fmt, width=width, height=height, sha256=sha256_hex(data), bytes=len(data)
    )


def expect_size(info: ImageInfo, width: int, height: int) -> None:
    """ImageError unless ``info`` is ``width`` × ``height`` pixels."""
    if (info.width, info.height) != (width, height):
        raise ImageError(f"image is {info.width}*{info.height} pixels, expected {width}*{height}")


def _open_and_load(data: bytes, *, max_pixels: int, formats: Sequence[str]) -> tuple[str, int, int]:
    """(format, width, height) after a structural check and a full decode."""
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as image:
            fmt, (width, height) = str(image.format), image.size
            _check_pixels(width, height, max_pixels)
            image.verify()  # structure and checksums; leaves the image unusable
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            image.load()  # every pixel: catches truncation that verify() cannot see
    except UnidentifiedImageError as exc:
        accepted = ", ".join(formats)
        raise ImageError(f"not an image (or not one of {accepted})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"truncated or corrupt image: {exc or type(exc).__name__}") from exc
    return fmt, width, height


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}*{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}*{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def thumbnail(
    data: bytes,
    *,
    max_side: int = THUMBNAIL_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> bytes:
    """A WebP thumbnail of ``data``, at most ``max_side`` pixels on its longer side.

    The aspect ratio is kept; transparency is kept; images already small are not enlarged.
    ImageError when ``data`` is not an image that :func:`verify_image` would accept.
    """
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as image:
            _check_pixels(image.width, image.height, max_pixels)
            # draft() lets JPEG decode at a reduced scale; other formats ignore it.
            image.draft("RGB", (max_side, max_side))
            mode = "RGBA" if _has_alpha(image) else "RGB"
            small = image if image.mode == mode else image.convert(mode)
            # A box reduction to near the target first, then Lanczos over a few hundred pixels:
            # faster than Lanczos from full size, and no visible difference at this size.
            small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=1.5)
            out = io.BytesIO()
            # WebP method 2 (of 0–6) encodes several times faster than the default 4 at this
            # size, for files a little larger (still a few kB). See bench/bench_thumbnails.py.
            small.save(out, format="WEBP", quality=THUMBNAIL_QUALITY, method=2)
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: cannot make a thumbnail") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot make a thumbnail: {exc or type(exc).__name__}") from exc
    return out.getvalue()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
