"""What an output image's object metadata says, so the catalog can be rebuilt from the store.

Every output ``images/<ab>/<request_key>/<i>.png`` carries, in its object metadata:

- always: ``request-key``, ``model``, ``mode``, ``seed``, ``image-index``, ``sha256``,
  ``width``, ``height``, ``run-id``, ``size``, ``n``, ``prompt-extend``, ``watermark``,
  ``unit-price``, ``currency``, ``task-id``, ``request-id``, ``created-at`` (POSIX s),
  ``input-sha256`` (comma-separated);
- when they fit S3's 2048-byte limit: ``row-id``, ``prompt``, ``negative-prompt``,
  ``tags`` (JSON) and ``input-images`` (JSON). Non-ASCII values travel RFC 2047 encoded (the
  store does that). When they do not fit, the object says ``request-doc: request.json`` and
  those fields live in ``images/<ab>/<request_key>/request.json`` beside the images.

Nothing secret is ever written here: no key, no credential, no signed URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qwbatch.core.types import CatalogRecord, RenderRequest
from qwbatch.core.uris import recorded_uri
from qwbatch.storage.base import MAX_METADATA_BYTES, metadata_size
from qwbatch.storage.layout import REQUEST_DOC


def image_metadata(
    request: RenderRequest,
    *,
    index: int,
    sha256: str,
    width: int,
    height: int,
    run_id: str,
    unit_price: float,
    currency: str,
    task_id: str | None,
    request_id: str | None,
    created_at: float,
) -> tuple[dict[str, str], bytes | None]:
    """The object metadata for output ``index`` of ``request``, and the request document to
    write beside it when the metadata cannot hold the prompt (else None)."""
    base = {
        "request-key": request.request_key,
        "model": request.model,
        "mode": request.mode,
        "seed": str(request.seed),
        "image-index": str(index),
        "sha256": sha256,
        "width": str(width),
        "height": str(height),
        "run-id": run_id,
        "size": request.size or "",
        "n": str(request.n),
        "prompt-extend": "" if request.prompt_extend is None else str(request.prompt_extend),
        "watermark": str(request.watermark),
        "unit-price": repr(unit_price),
        "currency": currency,
        "task-id": task_id or "",
        "request-id": request_id or "",
        "created-at": f"{created_at:.3f}",
        "input-sha256": ",".join(request.input_sha256),
    }
    # S3 drops empty values in some proxies; leave them out and read them back as absent.
    base = {k: v for k, v in base.items() if v != ""}
    doc = _request_fields(request)
    full = {**base, **{k: v for k, v in doc.items() if v != ""}}
    if metadata_size(full) <= MAX_METADATA_BYTES:
        return full, None
    encoded = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return {**base, "request-doc": REQUEST_DOC}, encoded


def _request_fields(request: RenderRequest) -> dict[str, str]:
    return {
        "row-id": request.row_id,
        "prompt": request.prompt,
        "negative-prompt": request.negative_prompt or "",
        "tags": json.dumps(dict(request.tags), ensure_ascii=False) if request.tags else "",
        "input-images": (
            json.dumps([recorded_uri(uri) for uri in request.input_images])
            if request.input_images
            else ""
        ),
    }


def record_from_metadata(
    metadata: Mapping[str, str],
    *,
    output_uri: str,
    size_bytes: int,
    doc: Mapping[str, Any] | None = None,
) -> CatalogRecord | None:
    """The catalog row an output object's metadata (and request document) describes; None
    when the object lacks what a row needs (not one of ours, or written before metadata
    carried the prompt)."""
    fields: dict[str, Any] = {**metadata, **(doc or {})}
    try:
        request_key = fields["request-key"]
        prompt = fields["prompt"]
        image_index = int(fields.get("image-index", "0"))
        unit_price = float(fields.get("unit-price", "0"))
        seed = int(fields["seed"])
    except (KeyError, ValueError):
        return None
    created = _float(fields.get("created-at"))
    tags = _json(fields.get("tags"), {})
    inputs = _json(fields.get("input-images"), [])
    return CatalogRecord(
        run_id=fields.get("run-id", "rebuild"),
        row_id=fields.get("row-id", request_key),
        request_key=request_key,
        mode=fields.get("mode", "generate"),
        model=fields.get("model", ""),
        prompt=prompt,
        negative_prompt=fields.get("negative-prompt") or None,
        size=fields.get("size") or None,
        n=int(fields.get("n", "1")),
        seed=seed,
        status="succeeded",
        image_index=image_index,
        provider_task_id=fields.get("task-id") or None,
        provider_request_id=fields.get("request-id") or None,
        output_uri=output_uri,
        sha256=fields.get("sha256"),
        bytes=size_bytes,
        width=_int(fields.get("width")),
        height=_int(fields.get("height")),
        unit_price=unit_price,
        currency=fields.get("currency"),
        cost=unit_price,
        started_at=created,
        finished_at=created,
        tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
        input_images=[str(i) for i in inputs] if isinstance(inputs, list) else [],
        input_sha256=[s for s in fields.get("input-sha256", "").split(",") if s],
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default
