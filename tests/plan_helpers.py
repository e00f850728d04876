"""What the plan's tests share: a catalog of earlier outputs for a manifest's requests.
Import it by bare name (``from plan_helpers import earlier_catalog``)."""

from __future__ import annotations

from pathlib import Path

from qwbatch.catalog import table as catalog
from qwbatch.core.model_table import ModelTable
from qwbatch.core.types import CatalogRecord
from qwbatch.manifest import read_manifest
from qwbatch.storage.stores import ObjectStore

TABLE = ModelTable.load()
DEFAULT = "qwen-image-2.0"


def earlier_catalog(store: ObjectStore, manifest: Path, *, every: int, all_images: bool) -> None:
    """A catalog part (run ``earlier``) holding outputs for every ``every``-th accepted
    request of ``manifest``: each of its images, or (``all_images`` False) its first only."""
    requests = [
        r for b in read_manifest(manifest, table=TABLE, default_model=DEFAULT) for r in b.requests
    ]
    records = [
        CatalogRecord(
            run_id="earlier",
            row_id=request.row_id,
            request_key=request.request_key,
            mode=request.mode,
            model=request.model,
            prompt=request.prompt,
            size=request.size,
            seed=request.seed,
            status="succeeded",
            image_index=index,
            output_uri=f"file:///x/{request.request_key}-{index}",
            sha256="ab" * 32,
            bytes=10,
            width=8,
            height=8,
        )
        for request in requests[::every]
        for index in range(request.n if all_images else 1)
    ]
    catalog.write_part(store, records, run_id="earlier", label="shard-00000")
