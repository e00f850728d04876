"""Edit runs end to end without Prefect: plan (fetch, check, stage) then shards (send from the
stage) against the simulator over HTTP, with inputs from files, a web server, S3 (moto) and
earlier outputs. The simulator's ledger says what it was sent and billed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_web import WebServer
from PIL import Image, ImageDraw
from support import engine_settings

from qwbatch.catalog import table as catalog
from qwbatch.core.settings import Settings
from qwbatch.inputs.lineage import trace
from qwbatch.inputs.staging import NORMALISER
from qwbatch.plan import Plan, new_run_id
from qwbatch.render.engine import ShardResult
from qwbatch.runs import runner
from qwbatch.storage.layout import staged_key
from qwbatch.storage.stores import open_store

EDIT_MODEL = "qwen-image-edit-plus"


SIGNATURE = "5ecret5ignature0f4presignedurl"


def picture(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """A flat picture with a white square: distinct colours give distinct bytes."""
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "prompt": [r.get("prompt", f"Edit {r['id']}") for r in rows],
            "mode": ["edit"] * len(rows),
            "model": [r.get("model", EDIT_MODEL) for r in rows],
            "size": [r.get("size", "1024*768") for r in rows],
            "seed": pa.array([r.get("seed", 7) for r in rows], pa.int64()),
            "input_images": pa.array([r["inputs"] for r in rows], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    return path


def run(manifest: Path, out: str, settings: Settings) -> tuple[Plan, list[ShardResult]]:
    """Plan and render every shard, as the flow does, minus Prefect."""
    run_id = new_run_id()
    plan = runner.plan(str(manifest), out, settings=settings, run_id=run_id)

    async def shards() -> list[ShardResult]:
        return [
            await runner.render_shard_async(
                key, out=out, run_id=run_id, manifest_dir="unused", settings=settings
            )
            for key in plan.shard_keys
        ]

    return plan, asyncio.run(shards())


def rows_of(out: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """The catalog's rows by row id (the newest for each)."""
    table = catalog.read_catalog(open_store(out, settings))
    ordered = sorted(table.to_pylist(), key=lambda r: r["finished_at"])
    return {row["row_id"]: row for row in ordered}


def rejects_of(out: Path, plan: Plan) -> dict[str, str]:
    if plan.rejects_uri is None:
        return {}
    table = pq.read_table(out / "rejects" / f"rejects-{plan.run_id}.parquet")
    return {r["id"]: r["reason"] for r in table.to_pylist()}


def generation_calls(sim) -> int:
    return int(sim.ledger()["requests"].get("generation", 0))


@pytest.fixture
def settings(sim) -> Settings:
    # strict_input_sides: the simulator refuses what the real service may refuse, so every
    # render below also proves the normalised inputs are acceptable.
    sim.configure(strict_input_sides=True)
    return engine_settings(sim, input_allow_hosts=["127.0.0.1"])


# --------------------------------------------------------------------------- sources


def test_a_small_file_input_is_resized_staged_sent_and_recorded(
    sim, settings: Settings, tmp_path: Path
) -> None:
    original = picture((200, 150), (220, 20, 20))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "small.png").write_bytes(original)
    manifest = write_manifest(tmp_path / "m" / "m.parquet", [{"id": "e1", "inputs": ["small.png"]}])
    out = tmp_path / "out"

    plan, _ = run(manifest, str(out), settings)

    assert plan.requests == 1
    row = rows_of(str(out), settings)["e1"]
    assert row["status"] == "succeeded"
    assert row["input_images"] == ["small.png"]
    assert row["input_sha256"] == [sha(original)]  # the key names the original bytes
    assert row["input_notes"] == ["resized 200*150 -> 512*384 px (each side must be 384-3072 px)"]
    # The stage holds what was sent, under the original's sha256.
    store = open_store(str(out), settings)
    staged = store.head(staged_key(sha(original)))
    assert staged is not None
    assert staged.metadata["normaliser"] == NORMALISER
    assert (staged.metadata["width"], staged.metadata["height"]) == ("512", "384")
    sent = store.get(staged_key(sha(original)))
    # The simulator received exactly those bytes, and billed one image.
    (entry,) = sim.ledger()["entries"]
    assert entry["inputs"] == [
        {"sha256": sha(sent), "format": "PNG", "width": 512, "height": 384, "bytes": len(sent)}
    ]
    # A visible edit: the red input, tinted, fills the output.
    with Image.open(Path(row["output_uri"].removeprefix("file://"))) as output:
        red, green, blue = output.convert("RGB").getpixel((output.width - 20, output.height // 2))
    assert red > 120
    assert red > max(green, blue)


def test_inputs_from_a_file_the_web_and_s3_into_an_s3_store(
    sim,
    settings: Settings,
    s3_settings: Settings,
    s3_client,
    s3_bucket: str,
    web: WebServer,
    tmp_path: Path,
) -> None:
    settings = settings.model_copy(
        update={
            k: getattr(s3_settings, k)
            for k in ("s3_endpoint_url", "s3_region", "s3_addressing_style")
        }
    )
    local, remote, bucketed = (
        picture((800, 600), (200, 30, 30)),
        picture((600, 800), (30, 200, 30), "JPEG"),
        picture((700, 700), (30, 30, 200), "WEBP"),
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "local.png").write_bytes(local)
    # A presigned URL: its query is a credential, kept out of the catalog and metadata.
    bare = web.route("/assets/remote.jpg", remote)
    url = f"{bare}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE}"
    s3_client.put_object(Bucket=s3_bucket, Key="assets/bucketed.webp", Body=bucketed)
    manifest = write_manifest(
        tmp_path / "m" / "m.parquet",
        [
            {"id": "from-file", "inputs": ["local.png"]},
            {"id": "from-web", "inputs": [url]},
            {"id": "from-s3", "inputs": [f"s3://{s3_bucket}/assets/bucketed.webp"]},
            {
                "id": "all-three",
                "inputs": ["local.png", url, f"s3://{s3_bucket}/assets/bucketed.webp"],
            },
        ],
    )
    out = f"s3://{s3_bucket}/renders"

    plan, shards = run(manifest, out, settings)

    assert plan.rejected == 0
    assert sum(s.images for s in shards) == 4
    rows = rows_of(out, settings)
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    assert rows["from-file"]["input_sha256"] == [sha(local)]
    assert rows["from-web"]["input_sha256"] == [sha(remote)]
    assert rows["from-s3"]["input_sha256"] == [sha(bucketed)]
    assert rows["all-three"]["input_sha256"] == [sha(local), sha(remote), sha(bucketed)]
    # In range and of a sendable format: sent byte for byte, in "Image 1/2/3" order.
    by_row = {e["request_id"]: e for e in sim.ledger()["entries"]}
    received = [
        [i["sha256"] for i in by_row[r["provider_request_id"]]["inputs"]] for r in rows.values()
    ]
    assert [sha(local), sha(remote), sha(bucketed)] in received
    staged = [k for k in open_store(out, settings).list("inputs/")]
    assert len(staged) == 3
    assert web.hits["/assets/remote.jpg"] == 1
    assert rows["from-web"]["input_images"] == [f"{bare}?…"]
    assert SIGNATURE not in json.dumps(list(rows.values()), default=str)
    for key in (r["output_uri"].removeprefix(f"s3://{s3_bucket}/") for r in rows.values()):
        metadata = s3_client.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
        assert "X-Amz" not in json.dumps(metadata)
    # Run again: every row deduplicated, and the rerun's rows keep no credential either.
    run(manifest, out, settings)
    again = catalog.read_catalog(open_store(out, settings)).to_pylist()
    assert {r["status"] for r in again} == {"succeeded", "deduplicated"}
    assert SIGNATURE not in json.dumps(again, default=str)


# --------------------------------------------------------------------------- once, by content


def test_same_bytes_behind_different_uris_are_one_request(
    sim, settings: Settings, web: WebServer, tmp_path: Path
) -> None:
    mug = picture((1024, 768), (180, 120, 60), "JPEG")
    folder = tmp_path / "m"
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "mug.jpg").write_bytes(mug)
    (folder / "photos" / "mug-copy.jpg").write_bytes(mug)
    url = web.route("/mug.jpg", mug)
    same = {"prompt": "Put the mug on marble", "seed": 3}
    manifest = write_manifest(
        folder / "m.parquet",
        [
            {"id": "by-path", "inputs": ["photos/mug.jpg"], **same},
            {"id": "by-copy", "inputs": ["photos/mug-copy.jpg"], **same},
            {"id": "by-url", "inputs": [url], **same},
            {"id": "by-file-uri", "inputs": [(folder / "photos" / "mug.jpg").as_uri()], **same},
            {"id": "url-again", "inputs": [url], "prompt": "Put the mug on oak", "seed": 3},
        ],
    )
    out = tmp_path / "out"

    plan, _ = run(manifest, str(out), settings)

    assert (plan.requests, plan.folded) == (2, 3)
    assert sim.ledger()["billed_images"] == 2
    rows = rows_of(str(out), settings)
    same_rows = [rows[i] for i in ("by-path", "by-copy", "by-url", "by-file-uri")]
    assert sorted(r["status"] for r in same_rows) == ["deduplicated"] * 3 + ["succeeded"]
    assert {r["output_uri"] for r in same_rows} == {same_rows[0]["output_uri"]}
    assert {tuple(r["input_sha256"]) for r in rows.values()} == {(sha(mug),)}
    # Each row records the name it used for those bytes.
    assert rows["by-copy"]["input_images"] == ["photos/mug-copy.jpg"]
    assert rows["by-url"]["input_images"] == [url]
    assert web.hits["/mug.jpg"] == 1  # two rows named the URL: fetched once
    assert len(list(open_store(str(out), settings).list("inputs/"))) == 1


def test_inputs_are_fetched_once_per_run_and_shards_read_the_stage(
    sim, settings: Settings, web: WebServer, tmp_path: Path
) -> None:
    url = web.route("/shoe.png", picture((900, 600), (20, 90, 160)))
    manifest = write_manifest(
        tmp_path / "m" / "m.parquet",
        [{"id": f"v{i}", "inputs": [url], "prompt": f"Variant {i}"} for i in range(4)],
    )
    out = tmp_path / "out"
    run_id = new_run_id()
    plan = runner.plan(
        str(manifest),
        str(out),
        settings=settings.model_copy(update={"shard_size": 2}),
        run_id=run_id,
    )
    assert web.hits["/shoe.png"] == 1
    assert len(plan.shard_keys) == 2
    for key in plan.shard_keys:  # shards, as on other workers: no fetch from the source
        asyncio.run(
            runner.render_shard_async(
                key, out=str(out), run_id=run_id, manifest_dir="unused", settings=settings
            )
        )
    assert web.hits["/shoe.png"] == 1
    assert sim.ledger()["billed_images"] == 4

    # The next run fetches again (a changed source must be seen) and pays for nothing.
    run(manifest, str(out), settings)
    assert web.hits["/shoe.png"] == 2
    assert sim.ledger()["billed_images"] == 4


def test_a_changed_file_is_a_new_request(sim, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.png").write_bytes(picture((600, 600), (10, 10, 10)))
    (folder / "b.png").write_bytes(picture((600, 600), (90, 90, 90)))
    manifest = write_manifest(
        folder / "m.parquet", [{"id": "a", "inputs": ["a.png"]}, {"id": "b", "inputs": ["b.png"]}]
    )
    out = tmp_path / "out"
    run(manifest, str(out), settings)
    first = rows_of(str(out), settings)
    (folder / "a.png").write_bytes(picture((600, 600), (250, 250, 0)))

    plan, _ = run(manifest, str(out), settings)

    assert (plan.requests, plan.deduplicated) == (1, 1)
    again = rows_of(str(out), settings)
    assert again["a"]["request_key"] != first["a"]["request_key"]
    assert again["b"]["request_key"] == first["b"]["request_key"]
    assert sim.ledger()["billed_images"] == 3


# --------------------------------------------------------------------------- refusals


def test_bad_inputs_are_refused_with_a_reason_and_no_provider_call(
    sim, settings: Settings, web: WebServer, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    good = picture((600, 600), (0, 120, 0))
    (folder / "good.png").write_bytes(good)
    (folder / "notes.png").write_text("remember to buy milk")
    (folder / "truncated.jpg").write_bytes(picture((900, 900), (1, 2, 3), "JPEG")[:1500])
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 MP in a few kB
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    (folder / "strip.png").write_bytes(picture((8000, 400), (5, 5, 5)))
    (folder / "huge.bmp").write_bytes(b"BM" + b"\0" * 3_000_000)
    (tmp_path / "secret.png").write_bytes(good)
    other_loopback = web.url("/good.png", host="127.0.0.2")
    bad = {
        "not-an-image": ("notes.png", "not an image (or not one of JPEG, PNG"),
        "truncated": ("truncated.jpg", "truncated or corrupt image"),
        "bomb": ("bomb.png", "81000000 pixels; the limit is 80000000"),
        "strip": ("strip.png", "has every side within 384-3072 px"),
        "too-big": ("huge.bmp", "is 3000002 bytes; originals over 2000000 bytes are refused"),
        "escapes": ("../secret.png", "escapes the manifest's folder"),
        "missing": ("nope.png", "not found"),
        "metadata": ("https://169.254.169.254/latest/meta-data/", "a link-local address"),
        "private": ("https://10.20.30.40/a.png", "a private address"),
        "loopback": ("https://[::1]/a.png", "a loopback address"),
        "plain-http": (other_loopback, "plain http:// is refused"),
        "no-parent": ("catalog:never-rendered", "has no stored output for row 'never-rendered'"),
        "unsupported": ("ftp://example.com/a.png", "unsupported source ftp://"),
    }
    settings = settings.model_copy(update={"input_max_download_bytes": 2_000_000})
    manifest = write_manifest(
        folder / "m.parquet", [{"id": rid, "inputs": [uri]} for rid, (uri, _) in bad.items()]
    )
    out = tmp_path / "out"

    plan, shards = run(manifest, str(out), settings)

    assert (plan.requests, plan.rejected, shards) == (0, len(bad), [])
    reasons = rejects_of(out, plan)
    for rid, (_, reason) in bad.items():
        assert reason in reasons[rid], (rid, reasons[rid])
        assert reasons[rid].startswith("input '"), reasons[rid]
    assert generation_calls(sim) == 0
    assert not list(open_store(str(out), settings).list("inputs/"))

    # The good row beside them goes on; the bad ones still cost nothing.
    rows = [{"id": rid, "inputs": [uri]} for rid, (uri, _) in bad.items()]
    write_manifest(manifest, [*rows, {"id": "good", "inputs": ["good.png"]}])
    plan, _ = run(manifest, str(out), settings)
    assert (plan.requests, plan.rejected) == (1, len(bad))
    assert generation_calls(sim) == 1
    assert sim.ledger()["entries"][0]["inputs"][0]["sha256"] == sha(good)


def test_a_missing_stage_fails_the_request_without_a_call(
    sim, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    original = picture((600, 600), (40, 40, 40))
    (folder / "a.png").write_bytes(original)
    manifest = write_manifest(folder / "m.parquet", [{"id": "a", "inputs": ["a.png"]}])
    out = tmp_path / "out"
    run_id = new_run_id()
    plan = runner.plan(str(manifest), str(out), settings=settings, run_id=run_id)
    open_store(str(out), settings).delete(staged_key(sha(original)))

    (result,) = [
        asyncio.run(
            runner.render_shard_async(
                key, out=str(out), run_id=run_id, manifest_dir="unused", settings=settings
            )
        )
        for key in plan.shard_keys
    ]

    assert dict(result.statuses) == {"failed": 1}
    row = rows_of(str(out), settings)["a"]
    assert row["error_code"] == "InputError"
    assert "is not staged" in row["error_message"]
    assert generation_calls(sim) == 0


# --------------------------------------------------------------------------- lineage


def test_two_step_chained_edit_is_traceable_in_the_catalog(
    sim, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    mug = picture((1024, 768), (200, 150, 90), "JPEG")
    (tmp_path / "step1").mkdir()
    (tmp_path / "step1" / "mug.jpg").write_bytes(mug)
    step1 = write_manifest(
        tmp_path / "step1" / "m.parquet",
        [{"id": "mug-marble", "inputs": ["mug.jpg"], "prompt": "Put the mug on marble"}],
    )
    run(step1, str(out), settings)
    parent = rows_of(str(out), settings)["mug-marble"]

    # Step 2, from another folder: name the output by catalog row, and by its URI.
    step2 = write_manifest(
        tmp_path / "step2" / "m.parquet",
        [
            {"id": "mug-snow", "inputs": ["catalog:mug-marble"], "prompt": "Add falling snow"},
            {"id": "mug-rain", "inputs": [parent["output_uri"]], "prompt": "Add rain"},
        ],
    )
    plan, _ = run(step2, str(out), settings)

    assert plan.rejected == 0
    rows = rows_of(str(out), settings)
    for rid in ("mug-snow", "mug-rain"):
        assert rows[rid]["status"] == "succeeded"
        assert rows[rid]["input_sha256"] == [parent["sha256"]]  # linked by content
    assert rows["mug-snow"]["input_images"] == ["catalog:mug-marble"]
    assert rows["mug-snow"]["input_notes"] == [f"from {parent['output_uri']}"]
    # The provider was sent the parent's very bytes (1024×768 PNG: nothing to change).
    step2_inputs = [e["inputs"][0]["sha256"] for e in sim.ledger()["entries"][1:]]
    assert step2_inputs == [parent["sha256"], parent["sha256"]]

    lineage = trace(open_store(str(out), settings), "mug-snow")
    assert (lineage.row_id, lineage.sha256) == ("mug-snow", rows["mug-snow"]["sha256"])
    (link,) = lineage.inputs
    assert link.uri == "catalog:mug-marble"
    assert link.parent is not None
    assert link.parent.row_id == "mug-marble"
    (origin,) = link.parent.inputs
    assert (origin.uri, origin.sha256, origin.parent) == ("mug.jpg", sha(mug), None)
    text = "\n".join(lineage.lines())
    for name in ("mug-snow", "mug-marble", "mug.jpg"):
        assert name in text


@pytest.mark.parametrize(("budget", "at_most"), [(10_000_000, 8_000_000), (3_000_000, 3_000_000)])
def test_decodes_at_once_are_bounded_by_the_pixel_budget(
    tmp_path: Path, budget: int, at_most: int
) -> None:
    from qwbatch.inputs.staging import InputStage

    names = []
    for i in range(8):  # 4 megapixels each, distinct bytes (the stage decodes each once)
        (tmp_path / f"big-{i}.png").write_bytes(picture((2500, 1600), (i * 30, 90, 200)))
        names.append(f"big-{i}.png")
    settings = Settings(input_decode_pixels=budget, input_fetch_concurrency=8)
    with InputStage.from_settings(
        settings, manifest_dir=tmp_path, store=None, stage=False
    ) as stage:
        stage.prefetch(names)
        digests = [stage(name) for name in names]
    assert len({d.sha256 for d in digests}) == 8  # every one checked, none refused
    # Two 4 MP decodes fit in 10 MP; one larger than the budget runs alone, holding all of it.
    assert stage.pixels.peak <= at_most
