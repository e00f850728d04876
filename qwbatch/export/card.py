"""The Hugging Face side of an ``hf`` export: the shards' schema and the dataset card.

``datasets.load_dataset(TARGET)`` reads ``README.md``'s YAML header: ``configs`` says which
files make each split, ``dataset_info.features`` the column types, so ``image`` loads as an
``Image`` feature (a PIL image) with no arguments. Each shard's Arrow schema also carries
the features (the ``huggingface`` metadata key), for readers given the files alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

_STR = pa.string()
#: (column, Arrow type, the datasets library's dtype) of the record's columns, in order.
_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("prompt", _STR, "string"),
    ("negative_prompt", _STR, "string"),
    ("row_id", _STR, "string"),
    ("image_index", pa.int32(), "int32"),
    ("run_id", _STR, "string"),
    ("request_key", _STR, "string"),
    ("mode", _STR, "string"),
    ("model", _STR, "string"),
    ("size", _STR, "string"),
    ("seed", pa.int64(), "int64"),
    ("width", pa.int32(), "int32"),
    ("height", pa.int32(), "int32"),
    ("sha256", _STR, "string"),
    ("currency", _STR, "string"),
    ("cost", pa.float64(), "float64"),
)
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", _STR)])
_TAG = pa.struct([("key", _STR), ("value", _STR)])


def _features(with_text: bool) -> dict[str, object]:
    """The datasets library's ``Features.to_dict()`` form of the columns."""
    features: dict[str, object] = {"image": {"_type": "Image"}}
    if with_text:
        features["text"] = {"dtype": "string", "_type": "Value"}
    for name, _, dtype in _COLUMNS:
        features[name] = {"dtype": dtype, "_type": "Value"}
    value = {"dtype": "string", "_type": "Value"}
    features["tags"] = {"feature": {"key": value, "value": value}, "_type": "List"}
    return features


def arrow_schema(*, with_text: bool) -> pa.Schema:
    """A shard's schema: ``image``, [``text``], the record's columns, ``tags``."""
    fields = [pa.field("image", _IMAGE)]
    if with_text:
        fields.append(pa.field("text", _STR))
    fields += [pa.field(name, kind) for name, kind, _ in _COLUMNS]
    fields.append(pa.field("tags", pa.list_(_TAG)))
    info = {"info": {"features": _features(with_text)}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(info)})


def readme(splits: Sequence[str], *, with_text: bool) -> str:
    """``README.md``: the YAML header ``load_dataset`` reads, then a few lines for people."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += ["dataset_info:", "  features:", "  - name: image", "    dtype: image"]
    if with_text:
        lines += ["  - name: text", "    dtype: string"]
    for name, _, dtype in _COLUMNS:
        lines += [f"  - name: {name}", f"    dtype: {dtype}"]
    lines += [
        "  - name: tags",
        "    list:",
        "    - name: key",
        "      dtype: string",
        "    - name: value",
        "      dtype: string",
        "---",
        "",
        "# Images rendered with qwbatch",
        "",
        "Each row is one generated image (`image`, PNG bytes) with the prompt and settings it",
        "was rendered from (`prompt`, `negative_prompt`, `model`, `seed`, `size`), its catalog",
        "identity (`row_id`, `image_index`, `run_id`, `request_key`, `sha256`), its cost and",
        "the manifest row's `tags`."
        + (" `text` is the caption chosen for training." if with_text else ""),
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)
