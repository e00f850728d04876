"""Pillow helpers: output verification, thumbnails, edit-input checks and normalisation, hashing.

Sections: *outputs* (``verify_image``: is a downloaded result a sound image of the expected
size; ``thumbnail``: a small WebP of it), *edit inputs* (``normalise_input``: make an input
image acceptable to the provider, or say why it cannot be), and small helpers
(``sha256_hex``, ``data_uri``). Every failure here is an ``ImageError`` whose message says
what was wrong with the bytes.

Decoding untrusted bytes is bounded two ways: only the formats in ``formats`` are tried (so
Pillow never hands a file to an external decoder such as Ghostscript), and images over
``max_pixels`` are refused before their pixels are decoded. Pillow's own global
``Image.MAX_IMAGE_PIXELS`` is left alone; its ``DecompressionBombWarning`` and ``…Error``
count as failures too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from qwbatch.core.errors import ImageError

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

#: Pillow format name → the Content-Type to store or send it with.
MIME_TYPES: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # multi-picture JPEG (phone cameras); plain decoders see the first
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


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
    with _decoded(data, max_pixels=max_pixels, formats=formats) as image:
        return _info(image, data)


@dataclass(frozen=True, slots=True)
class CheckedOutput:
    """A verified output image and its WebP thumbnail (None when none could be made)."""

    info: ImageInfo
    thumbnail: bytes | None


def check_output(
    data: bytes,
    *,
    max_side: int = THUMBNAIL_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> CheckedOutput:
    """:func:`verify_image` and :func:`thumbnail` from one decode of ``data``.

    ImageError when the image is not sound; a thumbnail that cannot be made is None (it is a
    convenience, never a reason to refuse an output). CPU-bound: Pillow releases the GIL
    while it decodes, resizes and encodes, so callers run it on a worker thread.
    """
    with _decoded(data, max_pixels=max_pixels, formats=formats) as image:
        info = _info(image, data)
        try:
            small = _thumbnail_of(image, max_side)
        except _DECODE_ERRORS:
            small = None
    return CheckedOutput(info, small)


def _info(image: Image.Image, data: bytes) -> ImageInfo:
    width, height = image.size
    return ImageInfo(
        format=str(image.format),
        width=width,
        height=height,
        sha256=sha256_hex(data),
        bytes=len(data),
    )


def expect_size(info: ImageInfo, width: int, height: int) -> None:
    """ImageError unless ``info`` is ``width`` × ``height`` pixels."""
    if (info.width, info.height) != (width, height):
        raise ImageError(f"image is {info.width}*{info.height} pixels, expected {width}*{height}")


def _decoded(data: bytes, *, max_pixels: int, formats: Sequence[str]) -> Image.Image:
    """The image of ``data``, every pixel decoded, after a structural check; the caller
    closes it (it is a context manager). ImageError if the bytes are not a sound image."""
    if not data:
        raise ImageError("not an image: no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as image:
            fmt = str(image.format)
            _check_pixels(image.width, image.height, max_pixels)
            image.verify()  # structure and checksums; leaves the image unusable
        image = Image.open(io.BytesIO(data), formats=[fmt])
        try:
            image.load()  # every pixel: catches truncation that verify() cannot see
        except BaseException:
            image.close()
            raise
    except UnidentifiedImageError as exc:
        accepted = ", ".join(formats)
        raise ImageError(f"not an image (or not one of {accepted})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"truncated or corrupt image: {exc or type(exc).__name__}") from exc
    return image


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
            return _thumbnail_of(image, max_side)
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: cannot make a thumbnail") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot make a thumbnail: {exc or type(exc).__name__}") from exc


def _thumbnail_of(image: Image.Image, max_side: int) -> bytes:
    """WebP bytes of ``image`` shrunk to at most ``max_side`` pixels on its longer side."""
    mode = "RGBA" if _has_alpha(image) else "RGB"
    small = image if image.mode == mode else image.convert(mode)
    # A box reduction by a whole factor first (cheap, and a fair average of the pixels it
    # merges), then Lanczos over what remains: no visible difference at this size, and
    # several times faster than Lanczos from the full image.
    factor = max(small.size) // max_side
    if factor >= 2:
        small = small.reduce(factor)
    elif small is image:
        small = image.copy()  # thumbnail() works in place; never on the caller's image
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=None)
    out = io.BytesIO()
    # WebP method 2 (of 0–6) encodes several times faster than the default 4 at this size,
    # for files a little larger (still a few kB). See bench/bench_thumbnails.py.
    small.save(out, format="WEBP", quality=THUMBNAIL_QUALITY, method=2)
    return out.getvalue()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


# --------------------------------------------------------------------------- edit inputs

#: Formats accepted as edit inputs (docs/providers/dashscope.md §3.5). Pillow's JPEG reader
#: names many phone JPEGs ``MPO`` (multi-picture); they are JPEGs to every other decoder.
INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Formats sent unchanged when nothing else needs changing. BMP, TIFF and GIF are turned
#: into PNG: the provider's support for them is second-hand, and a GIF is sent as the one
#: frame the provider would use.
_SENT_AS_IS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})
_LOSSY = frozenset({"JPEG", "MPO"})
#: What a changed image is first encoded as, by source format (else PNG): lossy stays lossy.
_REENCODE_AS = {"JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP"}
#: JPEG/WEBP qualities tried, in order, when an image must shrink to fit ``max_bytes``.
_QUALITIES = (90, 80, 70, 60)
#: Quality of a JPEG or WEBP that only had to be resized.
_RESIZE_QUALITY = 92
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What the provider accepts as an edit input, and our own cap.

    The provider's rules are in docs/providers/dashscope.md §3.5.

    ``min_side``/``max_side`` bound each side in pixels; ``max_bytes`` is the most bytes one
    encoded image may have (10 MB, read as 10,000,000: the docs do not say whether the limit
    counts raw or base64 bytes, so the smaller reading); ``max_pixels`` is the largest
    original we decode at all (width × height), which keeps a decompression bomb from
    allocating gigabytes and stays under Pillow's own warning threshold (~89.5 MP).
    """

    min_side: int = 384
    max_side: int = 3072
    max_bytes: int = 10_000_000
    max_pixels: int = 80_000_000


DEFAULT_INPUT_LIMITS = InputLimits()


@dataclass(frozen=True, slots=True)
class NormalisedImage:
    """An edit input ready to send, and what was done to get it there.

    ``data`` is what is sent, ``format`` its Pillow name, ``width``/``height`` its size in
    pixels; ``original_*`` describe the bytes we were given; ``changes`` says, in words, what
    was changed (empty when the original is sent as it is).
    """

    data: bytes
    format: str
    width: int
    height: int
    original_format: str
    original_width: int
    original_height: int
    changes: tuple[str, ...] = ()

    @property
    def content_type(self) -> str:
        return MIME_TYPES.get(self.format, f"image/{self.format.lower()}")

    @property
    def note(self) -> str:
        """The changes as one line for the catalog ("" when none)."""
        return "; ".join(self.changes)


def fit_sides(
    width: int, height: int, limits: InputLimits = DEFAULT_INPUT_LIMITS
) -> tuple[int, int]:
    """The size, keeping the aspect ratio, whose every side is within the limits (pixels).

    Unchanged when already within; else the short side is raised to ``min_side`` or the long
    side lowered to ``max_side``. ImageError when no size can keep the aspect ratio (a strip
    such as 8000 × 500 pixels).
    """
    short, long = min(width, height), max(width, height)
    if short >= limits.min_side and long <= limits.max_side:
        return width, height
    scale = limits.min_side / short if short < limits.min_side else limits.max_side / long
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(new) < limits.min_side or max(new) > limits.max_side:
        raise ImageError(
            f"image is {width}*{height} px; no size with its aspect ratio "
            f"({long / short:.1f}:1) has every side within {limits.min_side}-{limits.max_side} px"
        )
    return new


def normalise_input(data: bytes, limits: InputLimits = DEFAULT_INPUT_LIMITS) -> NormalisedImage:
    """Check an edit input with Pillow and make it acceptable to the provider.

    Refused (ImageError, saying why): no bytes, not one of ``INPUT_FORMATS``, more than
    ``limits.max_pixels`` pixels (checked from the header, before any pixel is decoded: a
    decompression bomb), a structure that does not verify, pixels that do not all decode (a
    truncated file), and an aspect ratio no size within the side limits can keep.

    Changed, each change named in ``changes``: BMP, TIFF and GIF become PNG (of a GIF, or an
    animated WEBP/PNG, the first frame); sides outside ``min_side``–``max_side`` are resized
    into range keeping the aspect ratio (Lanczos); an image over ``max_bytes`` is re-encoded,
    lossy (JPEG, or WEBP when it has transparency) at falling quality until it fits. A
    re-encoded image is turned upright by its EXIF orientation first. Otherwise the original
    bytes are sent as they are. The same bytes always give the same result.
    """
    if not data:
        raise ImageError("not an image: no bytes")
    fmt, width, height, frames = _inspect(data, limits)
    target = fit_sides(width, height, limits)
    animated = frames > 1 and fmt != "MPO"  # MPO's extra pictures are invisible to decoders
    as_is = fmt in _SENT_AS_IS and not animated and target == (width, height)
    if as_is and len(data) <= limits.max_bytes:
        _first_frame(data, fmt, None)  # every pixel decodes: not truncated
        return NormalisedImage(data, fmt, width, height, fmt, width, height)

    image = _first_frame(data, fmt, target if target != (width, height) else None)
    try:
        return _converted(image, fmt, (width, height), target, frames, len(data), limits)
    except (OSError, ValueError) as exc:  # a mode or encoder Pillow cannot handle here
        raise ImageError(f"cannot convert this {fmt} image for sending: {exc}") from exc


def _converted(
    image: Image.Image,
    fmt: str,
    size: tuple[int, int],
    target: tuple[int, int],
    frames: int,
    original_bytes: int,
    limits: InputLimits,
) -> NormalisedImage:
    """The decoded first frame made sendable; see :func:`normalise_input`."""
    width, height = size
    animated = frames > 1 and fmt != "MPO"
    changes: list[str] = []
    if fmt not in _SENT_AS_IS:
        changes.append(f"converted {fmt} to PNG")
    if animated:
        changes.append(f"first frame of {frames}")
    upright = (width, height)
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
        changes.append("turned upright by its EXIF orientation")
        if orientation >= 5:  # 5-8 turn by a quarter: the sides swap
            upright, target = (height, width), (target[1], target[0])
    image = _rgb_or_rgba(image)
    if target != upright:
        changes.append(
            f"resized {upright[0]}*{upright[1]} -> {target[0]}*{target[1]} px "
            f"(each side must be {limits.min_side}-{limits.max_side} px)"
        )
    if image.size != target:  # also after a JPEG draft decode that stopped above the target
        # reducing_gap: shrink by whole factors first (fast), then Lanczos the rest.
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    encoded, sent_format = _encode_within(image, fmt, limits.max_bytes, original_bytes, changes)
    return NormalisedImage(encoded, sent_format, *target, fmt, width, height, tuple(changes))


def data_uri(data: bytes, content_type: str | None = None) -> str:
    """``data:<type>;base64,…`` for ``data``; the type is read from the bytes when not given."""
    if content_type is None:
        content_type = MIME_TYPES.get(sniff_format(data), "application/octet-stream")
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def sniff_format(data: bytes) -> str:
    """Pillow's name for the format of ``data``, from its header; ImageError if unknown."""
    try:
        with Image.open(io.BytesIO(data), formats=list(INPUT_FORMATS)) as image:
            return str(image.format)
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageError("not an image (unknown format)") from exc


def header_pixels(data: bytes) -> int:
    """Width × height from the image's header, decoding no pixel; 0 when it has none."""
    try:
        with Image.open(io.BytesIO(data), formats=list(INPUT_FORMATS)) as image:
            return int(image.width) * int(image.height)
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        return 0


def _inspect(data: bytes, limits: InputLimits) -> tuple[str, int, int, int]:
    """(format, width, height, frames) from the header, after the pixel and structure checks."""
    try:
        with Image.open(io.BytesIO(data), formats=list(INPUT_FORMATS)) as image:
            fmt, (width, height) = str(image.format), image.size
            _check_pixels(width, height, limits.max_pixels)
            frames = int(getattr(image, "n_frames", 1))
            image.verify()  # chunk CRCs and structure, where the format has them
    except UnidentifiedImageError as exc:
        accepted = ", ".join(INPUT_FORMATS)
        raise ImageError(f"not an image (or not one of {accepted})") from exc
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc) from exc
    return fmt, width, height, frames


def _first_frame(data: bytes, fmt: str, shrink_to: tuple[int, int] | None) -> Image.Image:
    """The first frame, every pixel decoded; ImageError if it does not decode.

    ``shrink_to`` lets libjpeg decode a JPEG that will shrink at a reduced scale (never
    below that size), which saves memory and time on large photos.
    """
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG" if fmt == "MPO" else fmt]) as image:
            if shrink_to is not None and fmt in _LOSSY:
                image.draft("RGB", shrink_to)
            image.load()
            return image  # the pixels stay loaded after the file is closed
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc) from exc


def _decode_error(exc: BaseException) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(f"image too large to decode safely (decompression bomb?): {exc}")
    return ImageError(f"truncated or corrupt image: {exc or type(exc).__name__}")


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has any transparency (palette, LA, tRNS …)."""
    alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    mode = "RGBA" if alpha else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _encode(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


def _encode_within(
    image: Image.Image, source_format: str, max_bytes: int, original_bytes: int, changes: list[str]
) -> tuple[bytes, str]:
    """Encode ``image`` in at most ``max_bytes``: (bytes, format). Notes any lossy step."""
    has_alpha = image.mode == "RGBA"
    fmt = _REENCODE_AS.get(source_format, "PNG")
    if fmt == "JPEG" and has_alpha:
        fmt = "PNG"
    data = _encode(image, fmt, None if fmt == "PNG" else _RESIZE_QUALITY)
    if len(data) <= max_bytes:
        if original_bytes > max_bytes and not changes:
            changes.append(f"re-encoded as {fmt} to fit {max_bytes} bytes (was {original_bytes})")
        return data, fmt
    lossy = "WEBP" if has_alpha else "JPEG"
    for quality in _QUALITIES:
        data = _encode(image, lossy, quality)
        if len(data) <= max_bytes:
            changes.append(
                f"re-encoded as {lossy} (quality {quality}) to fit {max_bytes} bytes "
                f"(was {original_bytes})"
            )
            return data, lossy
    raise ImageError(
        f"image does not fit in {max_bytes} bytes even as {lossy} at quality {_QUALITIES[-1]}"
    )
