"""Channel sizes: a row's target_size is rendered at an allowed size, delivered at exactly it."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import fast_settings, render_all
from PIL import Image

from qwbatch.catalog.table import read_catalog
from qwbatch.core import images
from qwbatch.core.keys import RequestFields, canonical_request, key_and_seed, request_key
from qwbatch.core.model_table import ModelTable, parse_target_size
from qwbatch.manifest.reader import read_manifest
from qwbatch.report.html import render_html_report
from qwbatch.report.links import link_maker
from qwbatch.storage.layout import delivered_key, output_key
from qwbatch.storage.stores import LocalStore

KEY = "sk-channel-sizes-test-0123456789abcdef"
TABLE = ModelTable.load()


def test_keys_without_a_target_are_unchanged_and_with_one_it_follows_the_seed() -> None:
    plain = dict(model="qwen-image-2.0", mode="generate", prompt="a cat", seed=7)
    assert canonical_request(RequestFields(**plain)) == (
        b'["qwbatch/1","qwen-image-2.0","generate","a cat",null,null,1,null,false,[],7]'
    )
    assert canonical_request(RequestFields(**plain, target_size="300*250")) == (
        b'["qwbatch/1","qwen-image-2.0","generate","a cat",null,null,1,null,false,[],7,"300*250"]'
    )
    # A key made before channel sizes is still the same key: the hash of the form above.
    before = b'["qwbatch/1","qwen-image-2.0","generate","a cat",null,null,1,null,false,[],7]'
    assert request_key(RequestFields(**plain)) == hashlib.sha256(before).hexdigest()
    no_seed = dict(model="qwen-image-2.0", mode="generate", prompt="a cat", size="576*480")
    key, seed = key_and_seed(RequestFields(**no_seed))
    target_key, target_seed = key_and_seed(RequestFields(**no_seed, target_size="300*250"))
    assert target_seed == seed  # the same render, seed and all
    assert target_key != key
    assert request_key(RequestFields(**no_seed, seed=seed, target_size="300*250")) == target_key


@pytest.mark.parametrize(
    ("model", "target", "render"),
    [
        ("qwen-image-2.0", "300*250", "576*480"),  # too few pixels: scaled up, ratio kept
        ("qwen-image-2.0", "728*90", "1472*192"),
        ("qwen-image-2.0", "1080*1920", "1080*1920"),  # allowed as it is
        ("qwen-image-max", "300*250", "1472*1104"),  # the preset nearest in aspect ratio
        ("qwen-image-edit-plus", "728*90", "2048*512"),  # sides: as wide as the range allows
        ("flux-2-pro", "300*250", "304*256"),  # multiples of 16, rounded up to cover it
        ("flux-kontext-pro", "728*90", "400*176"),  # the ratio capped at the model's 2.33:1
    ],
)
def test_render_size_is_the_nearest_allowed(model: str, target: str, render: str) -> None:
    spec = TABLE.get(model)
    parsed = parse_target_size(target)
    assert parsed is not None
    assert spec.render_size_for(parsed) == render
    assert spec.size_problem(render) is None


def test_fit_to_gives_exactly_the_pixels_asked_for() -> None:
    source = io.BytesIO()
    Image.new("RGB", (576, 480), (200, 30, 30)).save(source, format="PNG")
    for width, height, pad in [(300, 250, False), (728, 90, False), (728, 90, True)]:
        out = images.fit_to(source.getvalue(), width, height, pad=pad)
        with Image.open(io.BytesIO(out)) as image:
            assert image.size == (width, height)
    padded = Image.open(io.BytesIO(images.fit_to(source.getvalue(), 728, 90, pad=True)))
    assert padded.convert("RGB").getpixel((0, 45)) == (255, 255, 255)  # the pad
    assert padded.convert("RGB").getpixel((364, 45))[0] > 150  # the picture


def _manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_the_reader_rejects_300x250_as_a_size_and_takes_it_as_a_target(tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path / "m.parquet",
        [
            {"id": "size", "prompt": "a banner", "size": "300*250", "target_size": None},
            {"id": "target", "prompt": "a banner", "size": None, "target_size": "300x250"},
            {"id": "pad", "prompt": "a banner", "size": None, "target_size": "728*90:PAD"},
            {"id": "bad", "prompt": "a banner", "size": None, "target_size": "wide"},
            {"id": "plain", "prompt": "a banner", "size": None, "target_size": None},
        ],
    )
    requests, rejects = read_manifest(
        manifest, table=TABLE, default_model="qwen-image-2.0"
    ).collect()
    assert {(r.row_id, r.column) for r in rejects} == {("size", "size"), ("bad", "target_size")}
    by_id = {r.row_id: r for r in requests}
    assert (by_id["target"].size, by_id["target"].target_size) == ("576*480", "300*250")
    assert (by_id["pad"].size, by_id["pad"].target_size) == ("1472*192", "728*90:pad")
    assert by_id["plain"].target_size is None
    # The plain row's key is the one a manifest without the column gives.
    bare = _manifest(tmp_path / "bare.parquet", [{"id": "plain", "prompt": "a banner"}])
    (alone,), _ = read_manifest(bare, table=TABLE, default_model="qwen-image-2.0").collect()
    assert alone.request_key == by_id["plain"].request_key


def test_channel_sizes_are_delivered_at_exactly_the_pixels(sim, tmp_path: Path) -> None:
    sim.configure(api_key=KEY, fast=True)
    targets = {"mrec": "300*250", "leader": "728*90", "story": "1080*1920", "pad": "728*90:pad"}
    rows: list[dict[str, object]] = [
        {"id": row_id, "prompt": f"autumn sale {row_id}", "target_size": target}
        for row_id, target in targets.items()
    ]
    rows.append({"id": "plain", "prompt": "autumn sale plain", "target_size": None})
    manifest = _manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    first = render_all(manifest, str(out), fast_settings(sim, KEY))
    assert first.statuses == {"succeeded": 5}

    store = LocalStore(out)
    catalog = {r["row_id"]: r for r in read_catalog(store).to_pylist()}
    for row_id, target in targets.items():
        row = catalog[row_id]
        assert row["target_size"] == target
        assert row["output_key"] == output_key(row["request_key"], 0)
        assert row["delivered_key"] == delivered_key(row["request_key"], 0)
        width, height = (int(v) for v in target.split(":")[0].split("*"))
        with Image.open(out / row["delivered_key"]) as delivered:
            assert delivered.size == (width, height)
        with Image.open(out / row["output_key"]) as rendered:  # the render, as billed
            assert f"{rendered.width}*{rendered.height}" == row["size"]
    assert catalog["story"]["size"] == "1080*1920"
    assert (catalog["plain"]["target_size"], catalog["plain"]["delivered_key"]) == (None, None)

    # The report names the channel size and links the delivered image beside the render.
    page = render_html_report(store, image_link=link_maker(store, page_dir=tmp_path))
    for row_id, target in targets.items():
        link = f'<a href="out/{catalog[row_id]["delivered_key"]}">delivered at {target}</a>'
        assert link in page

    # A rerun renders nothing and its deduplicated rows still name both images.
    second = render_all(manifest, str(out), fast_settings(sim, KEY))
    assert second.deduplicated == 5
    again = [r for r in read_catalog(store).to_pylist() if r["run_id"] == second.run_id]
    assert {r["row_id"]: r["delivered_key"] for r in again} == {
        row_id: row["delivered_key"] for row_id, row in catalog.items()
    }


def test_a_default_target_size_applies_to_rows_without_one(sim, tmp_path: Path) -> None:
    sim.configure(api_key=KEY, fast=True)
    manifest = _manifest(
        tmp_path / "m.parquet",
        [{"id": "a", "prompt": "poster a"}, {"id": "b", "prompt": "poster b"}],
    )
    out = tmp_path / "out"
    settings = fast_settings(sim, KEY, default_target_size="300*250")
    summary = render_all(manifest, str(out), settings)
    assert summary.statuses == {"succeeded": 2}
    for row in read_catalog(LocalStore(out)).to_pylist():
        assert (row["size"], row["target_size"]) == ("576*480", "300*250")
        with Image.open(out / row["delivered_key"]) as delivered:
            assert delivered.size == (300, 250)
