"""The local store: atomic writes (a writer killed midway leaves the old object), sidecars and
temp files kept out of listings."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from qwbatch.core.errors import (
    StorageError,
)
from qwbatch.storage.stores import (
    SIDECAR_SUFFIX,
    TEMP_PREFIX,
    LocalStore,
)

if TYPE_CHECKING:
    pass
from store_helpers import PNG_TYPE, md5_hex

# ---------------------------------------------------------------------------------------------
# Local store: atomicity, sidecars, temp files


def test_local_list_hides_sidecars_and_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/0.png", b"x", metadata={"v": "1"})
    (tmp_path / "a" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"left by a crash")

    assert (tmp_path / "a" / f".0.png{SIDECAR_SUFFIX}").exists()
    assert list(store.list("")) == ["a/0.png"]
    assert store.root_uri == tmp_path.as_uri()


def test_local_sidecar_that_no_longer_matches_is_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old", content_type=PNG_TYPE, metadata={"v": "1"})
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"changed behind our back")
    replacement.replace(tmp_path / "k")

    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {}  # unknown, rather than the old file's metadata
    assert info.etag == md5_hex(b"changed behind our back")
    assert info.content_type == "application/octet-stream"


def test_local_key_below_a_file_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"x")
    with pytest.raises(StorageError, match="local put"):
        store.put("a/b", b"y")
    store.put("c/d", b"x")
    with pytest.raises(StorageError, match="local put"):
        store.put("c", b"y", if_none_match=True)  # a folder is not "an existing object"
    assert store.get("a") == b"x"
    assert not store.exists("c")


_CHILD_PUT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from qwbatch.core.errors import StorageError
    from qwbatch.storage.stores import LocalStore

    root, mode = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    if mode == "die":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the kernel kills us mid-write
    try:
        LocalStore(root).put("k", b"n" * (4 << 20))
    except StorageError as exc:
        print(json.dumps({"error": str(exc)}))
    """
)


def _put_in_child(root: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD_PUT, str(root), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_local_write_killed_midway_leaves_old_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old", metadata={"v": "1"})

    child = _put_in_child(tmp_path, "die")

    assert child.returncode == -signal.SIGXFSZ, child.stderr
    assert any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())  # it did die mid-way
    assert store.get("k") == b"old"
    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {"v": "1"}
    assert list(store.list("")) == ["k"]


def test_local_failed_write_cleans_up_and_raises(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    child = _put_in_child(tmp_path, "raise")

    assert child.returncode == 0, child.stderr
    assert "local put of 'k' failed" in json.loads(child.stdout)["error"]
    assert not store.exists("k")
    assert [p.name for p in tmp_path.iterdir()] == []
