"""Thumbnails: made small and faithful, stored beside outputs at render time, never fatal."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image
from render_helpers import render
from support import engine_settings, make_request

from qwbatch.catalog.view import load_thumbnail
from qwbatch.core import images
from qwbatch.core.errors import ImageError, StorageError
from qwbatch.core.types import PlanItem
from qwbatch.simulator.render import colour
from qwbatch.storage.layout import output_key, thumb_key
from qwbatch.storage.stores import LocalStore, PutResult


def png(width: int, height: int, rgb: tuple[int, int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), rgb if mode == "RGB" else (*rgb, 128)).save(out, "PNG")
    return out.getvalue()


def test_thumbnail_is_small_webp_keeping_aspect_and_colour() -> None:
    small = images.thumbnail(png(1664, 928, (200, 40, 90)))
    with Image.open(io.BytesIO(small)) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) == images.THUMBNAIL_MAX_SIDE
        assert thumb.size == (256, round(928 * 256 / 1664))
        r, g, b = thumb.convert("RGB").getpixel((10, 10))  # type: ignore[misc]
    assert abs(r - 200) + abs(g - 40) + abs(b - 90) < 12
    assert len(small) < 4000


def test_thumbnail_keeps_transparency_and_does_not_enlarge() -> None:
    small = images.thumbnail(png(100, 50, (0, 0, 255), mode="RGBA"))
    with Image.open(io.BytesIO(small)) as thumb:
        assert thumb.size == (100, 50)
        assert thumb.mode == "RGBA"


def test_thumbnail_of_garbage_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        images.thumbnail(b"\x89PNG\r\n\x1a\nnot really")


@pytest.mark.parametrize(
    ("size", "mode"), [((1664, 928), "RGB"), ((2048, 2048), "RGB"), ((512, 300), "RGBA")]
)
def test_check_output_verifies_and_thumbnails_from_one_decode(
    size: tuple[int, int], mode: str
) -> None:
    data = png(*size, (30, 160, 90), mode=mode)
    checked = images.check_output(data)
    assert checked.info == images.verify_image(data)
    assert checked.thumbnail is not None
    with (
        Image.open(io.BytesIO(checked.thumbnail)) as ours,
        Image.open(io.BytesIO(images.thumbnail(data))) as alone,
    ):
        assert (ours.format, ours.size, ours.mode) == ("WEBP", alone.size, alone.mode)
        assert max(ours.size) == images.THUMBNAIL_MAX_SIDE
        r, g, b = ours.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
    assert abs(r - 30) + abs(g - 160) + abs(b - 90) < 12


def test_check_output_refuses_a_truncated_image() -> None:
    data = png(600, 400, (1, 2, 3))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        images.check_output(data[: len(data) - 30])


def test_engine_stores_a_thumbnail_beside_each_output(sim, tmp_path: Path) -> None:
    settings = engine_settings(sim)
    request = make_request("poster", "a lantern poster", n=2, size="1024*512")
    records = render([PlanItem(request)], settings, tmp_path)
    store = LocalStore(tmp_path)
    assert [r.status for r in records] == ["succeeded", "succeeded"]
    for record in records:
        index = record.image_index
        assert index is not None
        data = store.get(thumb_key(request.request_key, index))
        assert store.head(thumb_key(request.request_key, index)).content_type == "image/webp"
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.size == (256, 128)
            counts = thumb.convert("RGB").getcolors(256 * 128) or []
        tint = colour(request.prompt, request.seed, index)
        common = max(counts)[1]
        assert sum(abs(a - b) for a, b in zip(common, tint, strict=True)) < 15
        assert store.exists(output_key(request.request_key, index))


def test_a_thumbnail_cut_short_is_made_again_from_the_output(sim, tmp_path: Path) -> None:
    # Thumbnails are stored without fsync: after a power failure one may be empty.
    request = make_request("lamp", "a desk lamp", size="1024*512")
    (record,) = render([PlanItem(request)], engine_settings(sim), tmp_path)
    assert record.status == "succeeded"
    store = LocalStore(tmp_path)
    row = {"request_key": request.request_key, "image_index": 0, "output_uri": "x"}
    stored = load_thumbnail(store, row)
    Path(tmp_path, thumb_key(request.request_key, 0)).write_bytes(b"")
    remade = load_thumbnail(store, row)
    assert stored is not None
    assert stored[:4] == b"RIFF"
    assert remade is not None
    assert remade[:4] == b"RIFF"
    with Image.open(io.BytesIO(remade)) as thumb:
        assert thumb.size == (256, 128)


class RefusesThumbnails(LocalStore):
    """A store whose thumbnail uploads fail (a full disk, a denied prefix)."""

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        durable: bool = True,
    ) -> PutResult:
        if key.startswith("thumbs/"):
            raise StorageError(f"access denied: {key}")
        return super().put(
            key, data, content_type=content_type, metadata=metadata, if_none_match=if_none_match
        )


def test_a_failed_thumbnail_never_fails_the_image(
    sim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = engine_settings(sim)
    request = make_request("kite", "a kite")
    store = RefusesThumbnails(tmp_path)
    records = render([PlanItem(request)], settings, tmp_path, store=store)
    assert [r.status for r in records] == ["succeeded"]
    assert store.exists(output_key(request.request_key, 0))
    assert not store.exists(thumb_key(request.request_key, 0))
    assert "no thumbnail" in caplog.text
