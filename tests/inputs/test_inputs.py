"""Input sources (qwbatch.inputs.fetch): files and roots, S3 over moto's server, the output store,
``catalog:`` refs (qwbatch.inputs.lineage), and what each refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwbatch.catalog import table as catalog
from qwbatch.core.errors import InputError
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord
from qwbatch.inputs.fetch import InputFetcher, display_uri
from qwbatch.inputs.http import HttpInputs
from qwbatch.inputs.lineage import CatalogRefs, parse_ref
from qwbatch.storage.stores import LocalStore, ObjectStore, make_s3_client, open_store

MUG = b"\x89PNG fake mug bytes"


def fetcher(
    roots: list[Path], *, store: ObjectStore | None = None, settings: Settings | None = None
) -> InputFetcher:
    s3 = (lambda: make_s3_client(settings)) if settings is not None else None
    return InputFetcher(roots=roots, http=HttpInputs(), store=store, s3_client=s3, max_bytes=1000)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """A manifest folder with photos/, an extra root, and a secret outside both."""
    manifest, assets, outside = tmp_path / "manifest", tmp_path / "assets", tmp_path / "outside"
    for folder in (manifest / "photos", assets / "shared", outside):
        folder.mkdir(parents=True)
    (manifest / "photos" / "mug.png").write_bytes(MUG)
    (assets / "shared" / "logo.png").write_bytes(b"logo")
    (assets / "mug.png").write_bytes(b"the assets' mug")
    (outside / "secret.png").write_bytes(b"secret")
    return {"manifest": manifest, "assets": assets, "outside": outside}


# --------------------------------------------------------------------------- files


def test_relative_paths_try_the_manifest_folder_then_each_root(folders: dict[str, Path]) -> None:
    inputs = fetcher([folders["manifest"], folders["assets"]])
    assert inputs.fetch("photos/mug.png").data == MUG
    assert inputs.fetch("shared/logo.png").data == b"logo"  # only in the root
    assert inputs.fetch("./photos/../photos/mug.png").data == MUG


def test_absolute_paths_and_file_uris_inside_a_root(folders: dict[str, Path]) -> None:
    inputs = fetcher([folders["manifest"], folders["assets"]])
    path = folders["assets"] / "shared" / "logo.png"
    assert inputs.fetch(str(path)).data == b"logo"
    assert inputs.fetch(path.as_uri()).data == b"logo"
    assert inputs.fetch(f"file://localhost{path}").data == b"logo"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("../outside/secret.png", "escapes the manifest's folder and the input roots"),
        ("photos/../../outside/secret.png", "escapes"),
        ("{outside}/secret.png", "is outside the manifest's folder and the input roots"),
        ("file://{outside}/secret.png", "is outside"),
        ("file://otherhost/secret.png", "a file:// URI must be local"),
        ("photos/nope.png", "not found (looked in "),
        ("photos", "is not a regular file"),
    ],
)
def test_file_refusals(folders: dict[str, Path], uri: str, reason: str) -> None:
    inputs = fetcher([folders["manifest"]])
    with pytest.raises(InputError, match=reason.replace("(", r"\(")):
        inputs.fetch(uri.format(outside=folders["outside"]))


def test_a_symlink_out_of_the_roots_is_refused(folders: dict[str, Path]) -> None:
    link = folders["manifest"] / "photos" / "innocent.png"
    link.symlink_to(folders["outside"] / "secret.png")
    with pytest.raises(InputError, match="escapes"):
        fetcher([folders["manifest"]]).fetch("photos/innocent.png")
    # A link to another allowed root is fine: the bytes are inside what the user allowed.
    other = folders["manifest"] / "photos" / "logo.png"
    other.symlink_to(folders["assets"] / "shared" / "logo.png")
    both = fetcher([folders["manifest"], folders["assets"]])
    assert both.fetch("photos/logo.png").data == b"logo"


def test_oversized_files_are_refused(folders: dict[str, Path]) -> None:
    (folders["manifest"] / "huge.png").write_bytes(b"x" * 1001)
    with pytest.raises(InputError, match="is 1001 bytes; originals over 1000 bytes are refused"):
        fetcher([folders["manifest"]]).fetch("huge.png")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("data:image/png;base64,AAAA", "unsupported source data:"),
        ("ftp://example.com/a.png", "unsupported source ftp://"),
        ("oss://bucket/a.png", "unsupported source oss://"),
    ],
)
def test_unsupported_sources(folders: dict[str, Path], uri: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        fetcher([folders["manifest"]]).fetch(uri)


def test_settings_roots_come_after_the_manifest_folder(folders: dict[str, Path]) -> None:
    settings = Settings(input_roots=[folders["assets"]])
    inputs = InputFetcher.from_settings(settings, manifest_dir=folders["manifest"])
    assert inputs.fetch("shared/logo.png").data == b"logo"
    (folders["manifest"] / "mug.png").write_bytes(b"the manifest's mug")
    assert inputs.fetch("mug.png").data == b"the manifest's mug"  # first root wins


# --------------------------------------------------------------------------- S3


def test_s3_inputs_use_the_store_settings(
    s3_settings: Settings, s3_client, s3_bucket: str, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="catalog-photos/mug.png", Body=MUG)
    s3_client.put_object(Bucket=s3_bucket, Key="big.png", Body=b"x" * 2000)
    inputs = fetcher([tmp_path], settings=s3_settings)
    assert inputs.fetch(f"s3://{s3_bucket}/catalog-photos/mug.png").data == MUG
    with pytest.raises(InputError, match=r"not found \(no such key, or no such bucket\)"):
        inputs.fetch(f"s3://{s3_bucket}/catalog-photos/nope.png")
    with pytest.raises(InputError, match="not found"):
        inputs.fetch("s3://qwbatch-no-such-bucket-x1/a.png")
    with pytest.raises(InputError, match="is 2000 bytes; originals over 1000"):
        inputs.fetch(f"s3://{s3_bucket}/big.png")
    with pytest.raises(InputError, match="an S3 input is s3://bucket/key"):
        inputs.fetch(f"s3://{s3_bucket}/")


# --------------------------------------------------------------------------- outputs, catalog


def _record(row_id: str, uri: str, *, index: int = 0, finished: float = 0.0) -> CatalogRecord:
    return CatalogRecord(
        run_id="r1",
        row_id=row_id,
        request_key="k" * 64,
        mode="generate",
        model="qwen-image-2.0",
        prompt="p",
        size=None,
        seed=1,
        status="succeeded",
        image_index=index,
        output_uri=uri,
        sha256="s" * 64,
        started_at=finished,
        finished_at=finished or time.time(),
    )


def test_outputs_of_the_store_are_read_from_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    put = store.put("images/ab/abc/0.png", MUG)
    inputs = fetcher([tmp_path / "elsewhere"], store=store)
    # The out folder is not an input root: the output is reached through the store.
    assert inputs.fetch(put.uri).data == MUG
    with pytest.raises(InputError, match="no such object in the output store"):
        inputs.fetch(store.uri("images/ab/abc/1.png"))


def test_outputs_of_an_s3_store(s3_settings: Settings, s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_bucket}/renders", s3_settings)
    put = store.put("images/ab/abc/0.png", MUG)
    assert fetcher([tmp_path], store=store).fetch(put.uri).data == MUG


def test_catalog_refs_name_the_newest_output_of_a_row(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    old = store.put("images/aa/old/0.png", b"old").uri
    new = store.put("images/bb/new/0.png", b"new").uri
    second = store.put("images/bb/new/1.png", b"new, image 1").uri
    catalog.write_part(store, [_record("hero", old, finished=1000.0)], run_id="r1", label="a")
    catalog.write_part(
        store,
        [_record("hero", new, finished=2000.0), _record("hero", second, index=1, finished=2000.0)],
        run_id="r2",
        label="b",
    )
    inputs = fetcher([tmp_path], store=store)
    fetched = inputs.fetch("catalog:hero")
    assert (fetched.data, fetched.via) == (b"new", new)
    assert inputs.fetch("catalog:hero#1").data == b"new, image 1"
    with pytest.raises(InputError, match="has no stored output for row 'villain'"):
        inputs.fetch("catalog:villain")
    with pytest.raises(InputError, match="has no stored output image 4 for row 'hero'"):
        inputs.fetch("catalog:hero#4")
    with pytest.raises(InputError, match="catalog: needs a row id"):
        inputs.fetch("catalog:")
    without_store = fetcher([tmp_path])
    with pytest.raises(InputError, match="needs the output store"):
        without_store.fetch("catalog:hero")


def test_catalog_refs_prefer_a_literal_row_id_and_are_looked_up_in_bulk(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    uri = store.put("images/cc/x/0.png", b"x").uri
    catalog.write_part(store, [_record("sku#2", uri)], run_id="r1", label="a")
    assert parse_ref("catalog:sku#2") == [("sku#2", 0), ("sku", 2)]
    refs = CatalogRefs(store)
    refs.prefetch(["catalog:sku#2", "photos/a.png", "catalog:other"])
    assert refs.resolve("catalog:sku#2") == uri


def test_display_uri_hides_url_secrets() -> None:
    assert display_uri("https://h.example/a.png?sig=1") == "https://h.example/a.png?…"
    assert display_uri("photos/a.png") == "photos/a.png"
