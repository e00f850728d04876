"""Image verification: sound images pass, truncated, corrupt, foreign and huge ones do not."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from qwbatch.core.errors import ImageError
from qwbatch.core.images import ImageInfo, expect_size, sha256_hex, verify_image


def _encode(fmt: str, size: tuple[int, int] = (64, 32), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size)
    for x in range(size[0]):  # some texture, so truncation cuts real data
        image.putpixel((x, x % size[1]), (255, x * 4 % 256, 0) if mode == "RGB" else 255)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels in a few dozen bytes (a bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_valid_images_are_described(fmt: str) -> None:
    data = _encode(fmt)

    info = verify_image(data)

    assert info == ImageInfo(
        format=fmt,
        width=64,
        height=32,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
    )
    assert info.content_type == f"image/{fmt.lower()}"


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="half"),
        pytest.param(lambda d: d[:-12], id="no-IEND"),  # every pixel there, the end missing
        pytest.param(lambda d: d[:40], id="header-only"),
    ],
)
def test_truncated_png_fails(cut: object) -> None:
    data = _encode("PNG", (256, 256))
    with pytest.raises(ImageError, match=r"truncated or corrupt|not an image"):
        verify_image(cut(data))  # type: ignore[operator]


def test_truncated_jpeg_fails() -> None:
    data = _encode("JPEG", (256, 256))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        verify_image(data[: len(data) // 2])


def test_corrupt_png_checksum_fails() -> None:
    data = bytearray(_encode("PNG", (128, 128)))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    with pytest.raises(ImageError, match="truncated or corrupt"):
        verify_image(bytes(data))


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"<html>expired</html>", b"\x89PNG\r\n\x1a\n"],
)
def test_non_images_fail(data: bytes) -> None:
    with pytest.raises(ImageError, match=r"not an image|truncated or corrupt"):
        verify_image(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allowed_set_fail(fmt: str) -> None:
    data = _encode(fmt, mode="L")
    with pytest.raises(ImageError, match="not one of PNG, JPEG, WEBP"):
        verify_image(data)
    assert verify_image(data, formats=[fmt]).format == fmt


def test_image_over_our_pixel_limit_fails_before_decoding() -> None:
    with pytest.raises(ImageError, match="8000\\*6000 = 48000000 pixels; the limit is 40000000"):
        verify_image(_png_header_only(8000, 6000))


def test_pixel_limit_is_a_parameter() -> None:
    data = _encode("PNG", (100, 100))
    with pytest.raises(ImageError, match="the limit is 5000"):
        verify_image(data, max_pixels=5000)
    assert verify_image(data, max_pixels=10_000).width == 100


def test_real_compressed_bomb_fails() -> None:
    data = _encode("PNG", (7000, 7000), mode="1")  # 49 MP in a few kB
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="the limit is 40000000"):
        verify_image(data)


def test_pillow_bomb_error_fails() -> None:
    with pytest.raises(ImageError, match="too large to decode safely"):
        verify_image(_png_header_only(100_000, 100_000))


def test_pillow_bomb_warning_fails_as_an_error() -> None:
    # 100 MP: above Pillow's warning threshold; pytest turns the warning into an exception.
    with pytest.raises(ImageError, match="too large to decode safely"):
        verify_image(_png_header_only(10_000, 10_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_ignored_still_fails() -> None:
    with pytest.raises(ImageError, match="the limit is 40000000"):
        verify_image(_png_header_only(10_000, 10_000))


def test_expect_size() -> None:
    info = verify_image(_encode("PNG", (64, 32)))
    expect_size(info, 64, 32)
    with pytest.raises(ImageError, match="image is 64\\*32 pixels, expected 32\\*64"):
        expect_size(info, 32, 64)
