"""URIs kept where others read them, and paths a deployment run can use."""

from __future__ import annotations

import pytest

from qwbatch.core.errors import ConfigError
from qwbatch.core.uris import require_absolute


def test_deployment_paths_must_be_absolute_or_uris() -> None:
    assert require_absolute("/data/m.parquet", what="manifest", cwd="/tmp/x") == "/data/m.parquet"
    assert require_absolute("s3://b/out", what="out", cwd="/tmp/x") == "s3://b/out"
    with pytest.raises(ConfigError) as refused:
        require_absolute("manifests/m.parquet", what="manifest", cwd="/tmp/tmpab12cd")
    message = refused.value.message
    assert "manifest 'manifests/m.parquet' is a relative path" in message
    assert "/tmp/tmpab12cd" in message
    assert "absolute path or an s3:// URI" in message
