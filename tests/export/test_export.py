"""``qwbatch export``: each format read back by its own library, resumed, and s3:// → s3://."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from export_helpers import IMAGES, ROWS, render_dest
from typer.testing import CliRunner

from qwbatch.cli import app
from qwbatch.core.errors import ConfigError
from qwbatch.export import ShardDone, export
from qwbatch.storage.stores import LocalStore

SIZES = {row_id: size for row_id, _, _, size, _ in ROWS}
PROMPTS = {row_id: prompt for row_id, prompt, _, _, _ in ROWS}


@pytest.fixture(scope="module")
def dest(simulator, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A DEST with every row of ``ROWS`` rendered (7 images), shared by the module."""
    folder = tmp_path_factory.mktemp("export-dest")
    out = str(folder / "out")
    render_dest(simulator, folder, out)
    return out


@pytest.fixture
def offline_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The datasets library offline, its cache in the test's folder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _size(text: str) -> tuple[int, int]:
    width, height = text.split("*")
    return int(width), int(height)


def test_hf_export_loads_as_an_image_dataset_with_splits(dest, tmp_path, offline_hf) -> None:
    import datasets

    target = tmp_path / "hf"
    result = export(dest, str(target), format="hf", val_fraction=0.4)
    assert (result.exported, result.missing) == (IMAGES, [])
    assert result.splits == ["train", "validation"]

    loaded = datasets.load_dataset(str(target))
    assert sorted(loaded) == ["train", "validation"]
    assert sum(len(split) for split in loaded.values()) == IMAGES
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    for split in loaded.values():
        for row in split:
            assert row["image"].size == _size(SIZES[row["row_id"]])
            assert (row["width"], row["height"]) == row["image"].size
            assert row["prompt"] == PROMPTS[row["row_id"]]
            assert row["model"]
            assert row["cost"] > 0
            assert {t["key"] for t in row["tags"]} >= {"caption"}
    dog = [r for s in loaded.values() for r in s if r["row_id"] == "dog"]
    assert sorted(r["image_index"] for r in dog) == [0, 1]
    # The split is the row's, whatever its images: the dog's two images stay together.
    assert len({r["run_id"] for r in dog}) == 1


def test_webdataset_export_reads_back_with_webdataset(dest, tmp_path) -> None:
    import webdataset as wds
    from PIL import Image

    target = tmp_path / "wds"
    result = export(dest, str(target), format="webdataset", shard_size_mb=1e-6)
    assert result.exported == IMAGES
    tars = sorted(str(p) for p in target.glob("train-*.tar"))
    assert len(tars) == len(result.shards) > 1  # one byte a shard: one image a shard

    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == IMAGES
    for sample in samples:
        record = json.loads(sample["json"])
        assert "." not in sample["__key__"]
        assert sample["txt"].decode() == record["prompt"] == PROMPTS[record["row_id"]]
        image = Image.open(io.BytesIO(sample["png"]))
        assert image.size == _size(SIZES[record["row_id"]])
        assert "output_uri" not in record


def test_files_export_names_images_by_row_id_with_an_index(dest, tmp_path) -> None:
    target = tmp_path / "files"
    export(dest, str(target), format="files")
    with (target / "index.csv").open() as fh:
        index = list(csv.DictReader(fh))
    assert len(index) == IMAGES
    files = {row["file"] for row in index}
    assert {"cat.png", "dog.png", "dog-2.png", "owl.v2.png", "fox.png", "bee.png"} <= files
    unsafe = next(row["file"] for row in index if row["row_id"] == "a/b")
    assert "/" not in unsafe
    assert unsafe.startswith("a_b-h")
    for row in index:
        assert (target / row["file"]).is_file()
        assert row["text"] == PROMPTS[row["row_id"]]


def test_caption_column_and_split_by_a_tag(dest, tmp_path) -> None:
    target = tmp_path / "files"
    export(
        dest,
        str(target),
        format="files",
        caption_column="tag.caption",
        split_by="tag.split",
        filters=["id!=bee"],
    )
    with (target / "index.csv").open() as fh:
        index = {row["file"]: row for row in csv.DictReader(fh)}
    assert index["train/cat.png"]["text"] == "cat, sitting"
    assert index["test/dog-2.png"]["split"] == "test"
    # No split tag: train (val_fraction 0).
    assert next(f for f, r in index.items() if r["row_id"] == "a/b").startswith("train/")
    assert not any(r["row_id"] == "bee" for r in index.values())
    assert (target / "test" / "fox.png").is_file()


def test_an_interrupted_export_resumes_writing_only_what_is_missing(dest, tmp_path) -> None:
    target = tmp_path / "wds"
    store = LocalStore(target)

    class Crash(Exception):
        pass

    def crash_after_two(shard: ShardDone) -> None:
        if shard.key.endswith("000001.tar"):
            raise Crash

    with pytest.raises(Crash):
        export(dest, str(target), format="webdataset", shard_size_mb=1e-6, on_shard=crash_after_two)
    first = {key: store.head(key).etag for key in store.list() if key.endswith(".tar")}
    assert len(first) == 2
    # A shard stored but never recorded (cut off in between) is written again.
    store.put("train-000002.tar", b"half a shard")

    resumed = export(dest, str(target), format="webdataset", shard_size_mb=1e-6)
    assert (resumed.already, resumed.exported) == (2, IMAGES - 2)
    after = {key: store.head(key).etag for key in store.list() if key.endswith(".tar")}
    assert len(after) == IMAGES
    assert all(after[key] == etag for key, etag in first.items())  # not rewritten
    assert store.get("train-000002.tar") != b"half a shard"

    again = export(dest, str(target), format="webdataset", shard_size_mb=1e-6)
    assert (again.exported, again.already, again.shards) == (0, IMAGES, [])

    with pytest.raises(ConfigError, match="export made with"):
        export(dest, str(target), format="hf")


def test_cli_export_prints_what_it_wrote(dest, tmp_path) -> None:
    target = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["export", dest, "--to", str(target), "--format", "files", "--filter", "id=[cd]*"],
    )
    assert result.exit_code == 0, result.output
    assert "exported 3 images" in result.output
    bad = CliRunner().invoke(app, ["export", dest, "--to", str(target), "--filter", "nope"])
    assert bad.exit_code == 2
    assert "bad filter" in bad.output


def test_export_from_s3_to_s3_holds_no_uri_or_secret(
    simulator, s3_settings, s3_client, s3_bucket, tmp_path
) -> None:
    import webdataset as wds
    from fixtures_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

    source = f"s3://{s3_bucket}/renders"
    settings = render_dest(
        simulator,
        tmp_path,
        source,
        s3_endpoint_url=s3_settings.s3_endpoint_url,
        s3_region=s3_settings.s3_region,
        s3_addressing_style="path",
    )
    result = export(source, f"s3://{s3_bucket}/export", format="webdataset", settings=settings)
    assert result.exported == IMAGES
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="export/")["Contents"]
    for obj in listed:
        body = s3_client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
        for secret in (
            b"s3://",
            b"X-Amz-",
            FAKE_ACCESS_KEY_ID.encode(),
            FAKE_SECRET_ACCESS_KEY.encode(),
        ):
            assert secret not in body, (obj["Key"], secret)
        if obj["Key"].endswith(".tar"):
            (tmp_path / Path(obj["Key"]).name).write_bytes(body)
    tars = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    assert len(list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))) == IMAGES


FINALS = "{tag.split}/{tag.caption}/{row_id}-{k}.png"


def _index(target: Path) -> dict[str, dict[str, str]]:
    with (target / "index.csv").open() as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def test_path_template_lays_out_finals_from_tags(dest, tmp_path) -> None:
    target = tmp_path / "finals"
    result = export(dest, str(target), format="files", path_template=FINALS, filters=["id!=a/b"])
    assert result.exported == IMAGES - 1
    index = _index(target)
    assert {"test/dog/dog-1.png", "test/dog/dog-2.png", "test/fox/fox-1.png"} <= set(index)
    assert index["train/owl/owl.v2-1.png"]["row_id"] == "owl.v2"
    # A value that is not a safe segment is made one (with a hash): one folder, not two.
    (cat,) = (f for f, r in index.items() if r["row_id"] == "cat")
    assert cat.startswith("train/cat_sitting-h")
    assert cat.endswith("/cat-1.png")
    for file in index:
        assert (target / file).is_file()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.png")) == sorted(index)

    again = export(dest, str(target), format="files", path_template=FINALS, filters=["id!=a/b"])
    assert (again.exported, again.already) == (0, IMAGES - 1)
    with pytest.raises(ConfigError, match="export made with"):
        export(dest, str(target), format="files", filters=["id!=a/b"])  # today's layout


def test_path_template_refuses_a_missing_field_or_a_clash_before_writing(dest, tmp_path) -> None:
    target = tmp_path / "refused"
    with pytest.raises(ConfigError, match=r"row 'a/b' has no 'tag.split'"):
        export(dest, str(target), format="files", path_template=FINALS)
    clash = r"gives 1 image\(s\) a path another image has: test/dog.png \('dog' image 0 and"
    with pytest.raises(ConfigError, match=clash):
        export(
            dest,
            str(target),
            format="files",
            path_template="{tag.split}/{tag.caption}.png",
            filters=["id!=a/b"],
        )
    with pytest.raises(ConfigError, match="unknown field 'campaign'"):
        export(dest, str(target), format="files", path_template="{campaign}/{row_id}.png")
    with pytest.raises(ConfigError, match=r"must end with \.png"):
        export(dest, str(target), format="files", path_template="{row_id}")
    with pytest.raises(ConfigError, match="go with --format files"):
        export(dest, str(target), format="hf", path_template="{row_id}.png")
    assert not target.exists() or not any(target.rglob("*"))


def test_zip_holds_the_same_files_stored_and_is_rewritten_only_when_changed(dest, tmp_path) -> None:
    import zipfile

    target = tmp_path / "zipped"
    template = "{model}/{row_id}-{k}.png"
    first = export(
        dest, str(target), format="files", path_template=template, filters=["id=[cd]*"], zip=True
    )
    assert first.zipped
    index = _index(target)
    with zipfile.ZipFile(target / "finals.zip") as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["index.csv", *index]
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        for file in index:
            assert archive.read(file) == (target / file).read_bytes()
    stamp = (target / "finals.zip").stat()

    same = export(
        dest, str(target), format="files", path_template=template, filters=["id=[cd]*"], zip=True
    )
    assert not same.zipped
    assert (target / "finals.zip").stat().st_mtime_ns == stamp.st_mtime_ns

    more = export(dest, str(target), format="files", path_template=template, zip=True)
    assert more.zipped
    assert more.exported == IMAGES - 3
    with zipfile.ZipFile(target / "finals.zip") as archive:
        assert len(archive.namelist()) == IMAGES + 1


def test_cli_finals_combine_with_approved_only(dest, tmp_path) -> None:
    import shutil
    import zipfile

    from qwbatch.catalog import review
    from qwbatch.catalog.view import catalog_records

    out = tmp_path / "reviewed"
    shutil.copytree(dest, out)
    store = LocalStore(out)
    rows = {r["row_id"]: r for r in catalog_records(store, latest=True).to_pylist()}
    review.record_decisions(
        store,
        [
            {
                "run_id": rows[row]["run_id"],
                "row_id": row,
                "image_index": 0,
                "request_key": rows[row]["request_key"],
                "decision": "approved",
            }
            for row in ("cat", "dog")
        ],
    )
    target = tmp_path / "cli-finals"
    args = ["export", str(out), "--to", str(target), "--format", "files", "--approved-only"]
    args += ["--path-template", "{tag.split}/{row_id}-{k}.png", "--zip"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "exported 2 images" in result.output
    assert "finals.zip" in result.output
    with zipfile.ZipFile(target / "finals.zip") as archive:
        assert archive.namelist() == ["index.csv", "train/cat-1.png", "test/dog-1.png"]
