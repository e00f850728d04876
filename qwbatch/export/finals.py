"""``--zip``: a ``files`` export packed into one ``finals.zip`` beside it, to hand over.

The zip holds ``index.csv`` and every file it lists, under the same paths, *stored* (PNGs
do not compress; deflating them costs time for nothing). It is built after the files are
exported, from the files in the target, one image at a time into a temporary file: memory
is one image, whatever the export's size. A local target gets the file renamed into place
(readers never see half a zip); an ``s3://`` target gets it in one ``put`` (the zip is read
into memory for that: the object store has no streaming upload yet).

Re-running: the zip's content is decided by ``index.csv`` (it names each file and holds its
SHA-256), so the index's SHA-256 is recorded in ``_qwbatch-export/zip.json``. When the index
is unchanged and ``finals.zip`` is there, the zip is left alone; otherwise it is written
again whole (a zip's central directory sits at its end: appending means rewriting).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from qwbatch.core.errors import ObjectNotFoundError
from qwbatch.storage.stores import LocalStore, ObjectStore

ZIP_KEY = "finals.zip"
#: A fixed time for every member (1980-01-01, zip's epoch): the same files, the same zip.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_zip(store: ObjectStore, *, index: str, record_key: str) -> bool:
    """Pack ``index`` and the files it lists into ``finals.zip``; False when it was current."""
    listing = store.get(index)
    digest = hashlib.sha256(listing).hexdigest()
    try:
        recorded = json.loads(store.get(record_key)).get("index_sha256")
    except ObjectNotFoundError:
        recorded = None
    if recorded == digest and store.exists(ZIP_KEY):
        return False
    files = [row["file"] for row in csv.DictReader(io.StringIO(listing.decode()))]
    folder = store.root if isinstance(store, LocalStore) else None
    fd, name = tempfile.mkstemp(prefix=".finals-", suffix=".zip.tmp", dir=folder)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as archive:
            _add(archive, index, listing)
            for file in files:
                _add(archive, file, store.get(file))
        if isinstance(store, LocalStore):
            os.replace(temp, store.root / ZIP_KEY)
        else:
            store.put(ZIP_KEY, temp.read_bytes(), content_type="application/zip")
    finally:
        temp.unlink(missing_ok=True)
    body = json.dumps({"index_sha256": digest}).encode()
    store.put(record_key, body, content_type="application/json")
    return True


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)
