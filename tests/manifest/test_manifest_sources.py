"""Manifest authoring: CSV and JSON Lines to Parquet with a run's own validation, and the
annotated template."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from qwbatch.cli import app
from qwbatch.core.errors import ManifestError
from qwbatch.core.model_table import ModelTable
from qwbatch.manifest import MANIFEST_SCHEMA, read_manifest
from qwbatch.manifest.columns import COLUMN_TYPES
from qwbatch.manifest.converters import convert, read_csv, read_jsonl
from qwbatch.manifest.template import COLUMNS, EXAMPLES

ROOT = Path(__file__).parents[2]
TABLE = ModelTable.load()
DEFAULT = "qwen-image-2.0"
runner = CliRunner()

CSV = """\ufeff# notes before the header are skipped
id,prompt,size,n,seed,watermark,tags,mode,model,input_images,owner
a,a red kite,512*512,2,42,true,"campaign=autumn,sku=1001",,,,ann
b,,512*512,,,,,,,,bob

c,a blue kite,4096*4096,,,,,,,,cy
d,a green kite,512*512,two,,,,,,,dee
e,"a kite,
on two lines",,,,0,,,,,eve
a,the same id again,,,,,,,,,al
f,too,many,cells,,,,,,,,,x
g,make it green,512*512,,,,,edit,qwen-image-edit-plus,"[""shoes.png""]",gil
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def convert_file(source, out: Path, **kwargs):
    return convert(source, out, table=TABLE, default_model=DEFAULT, **kwargs)


def test_csv_good_rows_are_written_typed_and_bad_rows_rejected_with_reasons(
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "shoes.png").write_bytes(b"not checked here, only hashed")
    source = read_csv(write(tmp_path / "prompts.csv", CSV))
    done = convert_file(source, out_dir / "m.parquet")

    table = pq.read_table(out_dir / "m.parquet")
    assert table.column("id").to_pylist() == ["a", "e", "g"]
    for name in ("n", "seed", "watermark", "tags", "input_images"):
        assert table.schema.field(name).type == MANIFEST_SCHEMA.field(name).type
    first = table.to_pylist()[0]
    assert (first["n"], first["seed"], first["watermark"]) == (2, 42, True)
    assert first["tags"] == [("campaign", "autumn"), ("sku", "1001")]
    assert first["owner"] == "ann"  # extra columns are kept, as text
    assert table.to_pylist()[1]["prompt"] == "a kite,\non two lines"
    assert table.to_pylist()[2]["input_images"] == ["shoes.png"]

    reasons = {(r.row_number, r.row_id, r.column) for r in done.rejects}
    assert reasons == {
        (1, "b", "prompt"),
        (2, "c", "size"),
        (3, "d", "n"),
        (5, "a", "id"),
        (6, "f", "(row)"),
    }
    assert done.warnings == ["ignored unknown column 'owner'"]
    assert done.line_of_row[2] == 6  # row 2 (c) is on line 6: a note, the header, a blank line
    assert done.written == 3


def test_csv_rejects_are_the_ones_a_run_gives(tmp_path: Path) -> None:
    """The same rows as a Parquet manifest, read by the run's reader: the same reasons."""
    text = "id,prompt,size,n\nx,a cat,512*512,9\ny,a dog,1*1,\nz,,512*512,\nx,a cow,,\n"
    done = convert_file(read_csv(write(tmp_path / "p.csv", text)), tmp_path / "m.parquet")
    parquet = tmp_path / "direct.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["x", "y", "z", "x"],
                "prompt": ["a cat", "a dog", None, "a cow"],
                "size": ["512*512", "1*1", "512*512", None],
                "n": [9, None, None, None],
            }
        ),
        parquet,
    )
    _, direct = read_manifest(parquet, table=TABLE, default_model=DEFAULT).collect()
    assert [(r.row_number, r.column, r.reason) for r in done.rejects] == [
        (r.row_number, r.column, r.reason) for r in direct
    ]
    assert len(direct) == 4


def test_input_images_resolve_against_the_output_folder(tmp_path: Path) -> None:
    text = "id,prompt,mode,model,input_images\ne,make it green,edit,qwen-image-edit-plus,a.png\n"
    source = read_csv(write(tmp_path / "p.csv", text))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = convert_file(source, elsewhere / "m.parquet")
    assert [r.column for r in done.rejects] == ["input_images"]
    assert "not found" in done.rejects[0].reason
    (elsewhere / "a.png").write_bytes(b"bytes")
    assert convert_file(source, elsewhere / "m.parquet").rejects == []


def test_strict_writes_nothing(tmp_path: Path) -> None:
    source = read_csv(write(tmp_path / "p.csv", "id,prompt\na,ok\nb,\n"))
    with pytest.raises(ManifestError, match="strict"):
        convert_file(source, tmp_path / "m.parquet", strict=True)
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,text\na,b\n", "no 'prompt' column"),
        ("id,prompt,id\na,b,c\n", "more than once"),
        ("# only notes\n\n", "no header"),
        ('id,prompt\na,"unclosed\n', "not valid CSV"),
    ],
)
def test_unusable_csv_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        read_csv(write(tmp_path / "p.csv", text))


def test_non_utf8_csv_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("id,prompt\na,café\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_csv(path)


def test_jsonl_typed_values_notes_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        "# a note",
        json.dumps(
            {
                "id": "a",
                "prompt": "a kite",
                "n": 2,
                "seed": 7.0,
                "watermark": True,
                "tags": {"campaign": "autumn", "year": 2026},
            }
        ),
        "",
        "[1, 2]",
        "{not json",
        json.dumps({"id": "b", "prompt": "一只风筝", "input_images": [], "prompt_extend": "0"}),
        json.dumps({"id": "c", "prompt": "x", "n": 2.5}),
    ]
    source = read_jsonl(write(tmp_path / "p.jsonl", "\n".join(lines) + "\n"))
    done = convert_file(source, tmp_path / "m.parquet")
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert (rows[0]["n"], rows[0]["seed"], rows[0]["watermark"]) == (2, 7, True)
    assert rows[0]["tags"] == [("campaign", "autumn"), ("year", "2026")]
    assert rows[1]["prompt"] == "一只风筝"
    assert rows[1]["prompt_extend"] is False
    got = [(r.row_number, r.column) for r in done.rejects]
    assert got == [(1, "(line)"), (2, "(line)"), (4, "n")]
    assert "line 4" in done.rejects[0].reason


@pytest.mark.parametrize(("fmt", "command"), [("csv", "from-csv"), ("jsonl", "from-jsonl")])
def test_template_converts_cleanly_through_the_command(
    tmp_path: Path, fmt: str, command: str
) -> None:
    path = tmp_path / f"template.{fmt}"
    made = runner.invoke(app, ["manifest", "template", "--format", fmt, "-o", str(path)])
    assert made.exit_code == 0, made.output
    text = path.read_text(encoding="utf-8")
    for column in COLUMNS:
        assert re.search(rf"^#\s+{column.name}\s", text, re.MULTILINE), column.name
    out = tmp_path / "m.parquet"
    result = runner.invoke(app, ["manifest", command, str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(EXAMPLES)} rows" in result.output
    requests, rejects = read_manifest(out, table=TABLE, default_model=DEFAULT).collect()
    assert (len(requests), rejects) == (len(EXAMPLES), [])
    assert sum(r.n for r in requests) == sum(int(row.get("n", 1)) for row in EXAMPLES)


def test_template_to_stdout_and_bad_format() -> None:
    result = runner.invoke(app, ["manifest", "template"])
    assert result.exit_code == 0
    assert "id,prompt,mode,model" in result.output
    bad = runner.invoke(app, ["manifest", "template", "--format", "xlsx"])
    assert bad.exit_code == 2


def test_from_csv_command_reports_rejects_and_writes_them(tmp_path: Path) -> None:
    source = write(tmp_path / "p.csv", "id,prompt,size\na,a cat,512*512\nb,a dog,3*3\n")
    rejects = tmp_path / "rejects.parquet"
    result = runner.invoke(
        app,
        [
            "manifest",
            "from-csv",
            str(source),
            "-o",
            str(tmp_path / "m.parquet"),
            "--rejects",
            str(rejects),
        ],
    )
    assert result.exit_code == 1
    assert "1 rows" in result.output
    assert "row 1 (line 3) id='b' [size]" in result.output
    assert pq.read_table(rejects).column("id").to_pylist() == ["b"]
    missing = runner.invoke(
        app, ["manifest", "from-csv", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.parquet")]
    )
    assert missing.exit_code == 2
    assert "cannot read" in missing.output


def test_every_column_is_in_the_template_and_the_docs_with_an_example() -> None:
    assert [c.name for c in COLUMNS] == list(COLUMN_TYPES)
    page = (ROOT / "docs" / "manifest.md").read_text(encoding="utf-8")
    section = page.split("\n## ", 1)[0]  # the columns table, before "## Models"
    for name in COLUMN_TYPES:
        row = re.search(rf"^\| `{name}` \|(.*)\|\s*$", section, re.MULTILINE)
        assert row, f"docs/manifest.md's columns table lacks {name}"
        cells = [cell.strip() for cell in row.group(1).split("|")]
        assert all(cells), f"docs/manifest.md's row for {name} has an empty cell"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_manifest_gets_the_users_umask(tmp_path: Path, mask: int) -> None:
    source = read_csv(write(tmp_path / "m.csv", "id,prompt\na,a fox\n"))
    previous = os.umask(mask)
    try:
        convert_file(source, tmp_path / "m.parquet")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m.parquet").stat().st_mode) == 0o666 & ~mask
