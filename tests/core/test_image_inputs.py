"""Edit-input checks and normalisation (qwbatch.core.images, the edit-inputs section).

Every path: sent as is, converted, first frame, resized up and down, re-encoded to fit, turned
upright; and every refusal: no bytes, not an image, truncated, corrupt, decompression bomb,
an aspect ratio that cannot fit.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import pytest
from PIL import Image

from qwbatch.core.errors import ImageError
from qwbatch.core.images import (
    InputLimits,
    data_uri,
    fit_sides,
    normalise_input,
    sha256_hex,
    sniff_format,
)

RED = (200, 40, 30)


def encode(fmt: str, size: tuple[int, int], mode: str = "RGB", **options: object) -> bytes:
    colour: object = RED if mode == "RGB" else ((*RED, 128) if mode == "RGBA" else 128)
    image = Image.new(mode, size, colour)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Incompressible pixels: what makes a file big."""
    return Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode)))


# --------------------------------------------------------------------------- sent as is


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_sound_images_in_range_are_sent_as_they_are(fmt: str) -> None:
    data = encode(fmt, (800, 600))
    image = normalise_input(data)
    assert image.data == data  # the very bytes, so nothing is lost
    assert (image.format, image.width, image.height) == (fmt, 800, 600)
    assert (image.original_format, image.original_width, image.original_height) == (fmt, 800, 600)
    assert image.changes == ()
    assert image.note == ""


def test_exact_limits_are_in_range() -> None:
    for size in [(384, 3072), (3072, 384), (384, 384)]:
        assert normalise_input(encode("PNG", size)).changes == ()


def test_phone_multi_picture_jpeg_is_sent_as_a_jpeg() -> None:
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (800, 600), RED), Image.new("RGB", (800, 600), "blue")
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    image = normalise_input(buffer.getvalue())
    assert image.original_format == "MPO"
    assert image.content_type == "image/jpeg"
    assert image.changes == ()


# --------------------------------------------------------------------------- converted


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_bmp_tiff_gif_become_png(fmt: str) -> None:
    image = normalise_input(encode(fmt, (500, 400)))
    assert image.format == "PNG"
    assert image.content_type == "image/png"
    assert image.changes == (f"converted {fmt} to PNG",)
    assert decoded(image.data).size == (500, 400)


def test_animated_gif_sends_its_first_frame() -> None:
    frames = [Image.new("RGB", (400, 400), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = normalise_input(buffer.getvalue())
    assert image.changes == ("converted GIF to PNG", "first frame of 3")
    pixel = decoded(image.data).convert("RGB").getpixel((200, 200))
    assert pixel == RED


def test_transparency_is_kept() -> None:
    image = normalise_input(encode("PNG", (200, 200), mode="RGBA"))
    assert image.format == "PNG"
    assert decoded(image.data).mode == "RGBA"


# --------------------------------------------------------------------------- resized


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((200, 150), (512, 384)),  # short side raised to 384
        ((150, 200), (384, 512)),
        ((100, 100), (384, 384)),
        ((3500, 500), (3072, 439)),  # long side lowered to 3072
        ((3200, 1000), (3072, 960)),
        ((3073, 400), (3072, 400)),
    ],
)
def test_sides_are_brought_into_range_keeping_the_aspect_ratio(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    image = normalise_input(encode("PNG", size))
    assert (image.width, image.height) == expected
    assert decoded(image.data).size == expected
    assert image.changes == (
        f"resized {size[0]}*{size[1]} -> {expected[0]}*{expected[1]} px "
        "(each side must be 384-3072 px)",
    )
    assert abs(expected[0] / expected[1] - size[0] / size[1]) < 0.01


def test_a_resized_jpeg_stays_a_jpeg() -> None:
    image = normalise_input(encode("JPEG", (4000, 800)))
    assert (image.format, image.width, image.height) == ("JPEG", 3072, 614)


def test_exif_orientation_is_applied_when_reencoding() -> None:
    # Stored 4000×1000 with "rotate 90° clockwise to view": it is a 1000×4000 portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode("JPEG", (4000, 1000), exif=exif)
    image = normalise_input(data)
    assert (image.width, image.height) == (768, 3072)
    assert decoded(image.data).size == (768, 3072)
    assert image.changes == (
        "turned upright by its EXIF orientation",
        "resized 1000*4000 -> 768*3072 px (each side must be 384-3072 px)",
    )


@pytest.mark.parametrize("size", [(8000, 500), (500, 8000), (3072, 383), (200, 3072)])
def test_aspect_ratios_that_cannot_fit_are_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ImageError, match="has every side within 384-3072 px"):
        normalise_input(encode("PNG", size, mode="L"))


def test_fit_sides_is_a_pure_function_of_size_and_limits() -> None:
    limits = InputLimits(min_side=10, max_side=100)
    assert fit_sides(50, 50, limits) == (50, 50)
    assert fit_sides(5, 8, limits) == (10, 16)
    assert fit_sides(400, 200, limits) == (100, 50)


# --------------------------------------------------------------------------- re-encoded


def test_too_many_bytes_are_reencoded_lossy_to_fit() -> None:
    buffer = io.BytesIO()
    noise((600, 600)).save(buffer, format="PNG")
    data = buffer.getvalue()
    limits = InputLimits(max_bytes=400_000)
    assert len(data) > limits.max_bytes
    image = normalise_input(data, limits)
    assert image.format == "JPEG"
    assert len(image.data) <= limits.max_bytes
    (change,) = image.changes
    assert change.startswith("re-encoded as JPEG (quality ")
    assert change.endswith(f"to fit 400000 bytes (was {len(data)})")


def test_transparent_images_that_must_shrink_become_webp() -> None:
    picture = noise((600, 600))
    picture.putalpha(200)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 700_000
    image = normalise_input(buffer.getvalue(), InputLimits(max_bytes=700_000))
    assert image.format == "WEBP"
    assert decoded(image.data).mode == "RGBA"


def test_lossless_reencoding_that_fits_is_noted() -> None:
    # An uncompressed TIFF of a flat colour: large on disk, tiny as a PNG.
    data = encode("TIFF", (800, 800))
    image = normalise_input(data, InputLimits(max_bytes=len(data) - 1))
    assert image.format == "PNG"
    assert image.changes == ("converted TIFF to PNG",)
    flat_png = encode("PNG", (800, 800), optimize=False, compress_level=0)
    image = normalise_input(flat_png, InputLimits(max_bytes=len(flat_png) - 1))
    assert image.changes == (
        f"re-encoded as PNG to fit {len(flat_png) - 1} bytes (was {len(flat_png)})",
    )


def test_an_image_that_cannot_fit_is_refused() -> None:
    buffer = io.BytesIO()
    noise((500, 500)).save(buffer, format="PNG")
    with pytest.raises(ImageError, match="does not fit in 1000 bytes even as JPEG at quality 60"):
        normalise_input(buffer.getvalue(), InputLimits(max_bytes=1000))


def test_normalisation_is_deterministic() -> None:
    data = encode("BMP", (250, 200))
    first, second = normalise_input(data), normalise_input(data)
    assert first == second


# --------------------------------------------------------------------------- refused


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not an image: no bytes"),
        (b"name,price\nmug,12\n", r"not an image \(or not one of JPEG, PNG, WEBP, GIF, BMP, TIFF"),
        (b"<html><body>Access denied</body></html>", "not an image"),
        (b"%PDF-1.7\n", "not an image"),
    ],
)
def test_non_images_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        normalise_input(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_files_are_refused(fmt: str) -> None:
    buffer = io.BytesIO()
    noise((500, 400)).save(buffer, format=fmt)
    data = buffer.getvalue()
    with pytest.raises(ImageError, match=r"truncated or corrupt|not an image"):
        normalise_input(data[: len(data) * 2 // 3])


def test_a_truncated_file_is_refused_even_when_it_would_be_sent_as_is() -> None:
    buffer = io.BytesIO()
    noise((800, 600)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        normalise_input(data[: len(data) // 2])


def test_corrupt_checksum_is_refused() -> None:
    data = bytearray(encode("PNG", (500, 500)))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    with pytest.raises(ImageError, match="truncated or corrupt"):
        normalise_input(bytes(data))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = _png_claiming(100_000, 100_000)  # 10 gigapixels in 80 bytes
    with pytest.raises(ImageError, match=r"decompression bomb\?"):
        normalise_input(bomb)


def test_real_compressed_bomb_is_refused_before_decoding() -> None:
    data = encode("PNG", (9000, 9000), mode="1")  # 81 MP of one bit each, a few kB on disk
    assert len(data) < 50_000
    with pytest.raises(ImageError, match=r"9000\*9000 = 81000000 pixels; the limit is 80000000"):
        normalise_input(data)


# --------------------------------------------------------------------------- helpers


def test_data_uri_names_the_type_read_from_the_bytes() -> None:
    for fmt, mime in [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]:
        data = encode(fmt, (400, 400))
        uri = data_uri(data)
        assert uri.startswith(f"data:{mime};base64,")
        assert base64.b64decode(uri.split(",", 1)[1]) == data
        assert sniff_format(data) == fmt
    with pytest.raises(ImageError):
        sniff_format(b"hello")
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
