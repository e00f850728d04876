"""Secrets from Prefect Secret blocks, read at run time by the process that needs them.

``QWBATCH_SECRET_BLOCKS`` maps environment variables to the Secret blocks holding their
values, as a JSON object::

    QWBATCH_SECRET_BLOCKS='{"DASHSCOPE_API_KEY": "dashscope-api-key",
                            "AWS_SECRET_ACCESS_KEY": "qwbatch-s3-secret-access-key"}'

Before settings are loaded, a flow run process reads each block and sets the variable, unless
it is already set (a worker's own environment wins). Only block *names* travel through
deployments and job variables. A ``{{ prefect.blocks.secret.x }}`` placeholder in
``prefect.yaml`` job variables would instead be resolved by ``prefect deploy`` and the value
stored in the deployment, readable in the UI and API (PrefectHQ/prefect#14088, #17432).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, MutableMapping
from typing import Any, cast

from qwbatch.core.errors import ConfigError

#: The environment variable holding the JSON map ``{"ENV_NAME": "secret-block-name"}``.
SECRET_BLOCKS_ENV = "QWBATCH_SECRET_BLOCKS"  # noqa: S105  # a variable's name, not a secret

_lock = threading.Lock()


def _load_secret(block_name: str) -> str:
    from prefect.blocks.system import Secret

    # Sync context: Prefect's sync-compatible load returns the block, not a coroutine.
    block = cast(Secret[Any], Secret.load(block_name))
    value = block.get()
    return value if isinstance(value, str) else json.dumps(value)


def export_secret_blocks(
    environ: MutableMapping[str, str] | None = None,
    load: Callable[[str], str] = _load_secret,
) -> list[str]:
    """Set the variables named in ``QWBATCH_SECRET_BLOCKS`` from their blocks; their names.

    Variables already set are left alone (and their blocks not read), so calling this again
    costs nothing. Raises ConfigError for a malformed map or a block that cannot be read; the
    message names the block and the variable, never a value.
    """
    env = os.environ if environ is None else environ
    raw = env.get(SECRET_BLOCKS_ENV, "").strip()
    if not raw:
        return []
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()
    ):
        raise ConfigError(
            f"{SECRET_BLOCKS_ENV} must be a JSON object of environment variable names to "
            'Secret block names, such as {"DASHSCOPE_API_KEY": "dashscope-api-key"}'
        )
    exported: list[str] = []
    with _lock:  # shard tasks share the process: read each block once
        for name, block in mapping.items():
            if env.get(name):
                continue
            try:
                env[name] = load(block)
            except (ValueError, OSError) as exc:
                # Prefect raises ValueError for a missing block; the reason names no value.
                raise ConfigError(
                    f"cannot read Secret block {block!r} for {name}: {type(exc).__name__}"
                ) from None
            exported.append(name)
    return exported
