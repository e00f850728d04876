"""Secrets from Prefect Secret blocks, read at run time (a real Prefect server)."""

from __future__ import annotations

import json
import secrets

import pytest

from flows.secret_blocks import SECRET_BLOCKS_ENV, export_secret_blocks
from qwbatch.core.errors import ConfigError


@pytest.fixture
def secret_block(prefect_server) -> tuple[str, str]:
    from prefect.blocks.system import Secret

    name, value = f"test-key-{secrets.token_hex(4)}", f"sk-{secrets.token_hex(16)}"
    Secret(value=value).save(name)
    return name, value


def test_blocks_named_in_the_map_become_environment_variables(secret_block) -> None:
    name, value = secret_block
    env = {SECRET_BLOCKS_ENV: json.dumps({"DASHSCOPE_API_KEY": name})}

    assert export_secret_blocks(env) == ["DASHSCOPE_API_KEY"]
    assert env["DASHSCOPE_API_KEY"] == value
    assert export_secret_blocks(env) == []  # set now: not read again


def test_a_variable_already_set_wins_and_its_block_is_not_read() -> None:
    def refuse(block: str) -> str:
        raise AssertionError(f"read {block}")

    env = {SECRET_BLOCKS_ENV: '{"DASHSCOPE_API_KEY": "x"}', "DASHSCOPE_API_KEY": "from-env"}
    assert export_secret_blocks(env, load=refuse) == []
    assert env["DASHSCOPE_API_KEY"] == "from-env"


def test_no_map_means_nothing_to_do() -> None:
    assert export_secret_blocks({}) == []
    assert export_secret_blocks({SECRET_BLOCKS_ENV: "  "}) == []


@pytest.mark.parametrize("raw", ["not json", '["a"]', '{"A": 1}', '{"": "b"}'])
def test_a_malformed_map_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        export_secret_blocks({SECRET_BLOCKS_ENV: raw})


def test_a_missing_block_names_the_block_and_the_variable(prefect_server) -> None:
    env = {SECRET_BLOCKS_ENV: '{"DASHSCOPE_API_KEY": "no-such-block-here"}'}
    with pytest.raises(ConfigError, match="'no-such-block-here' for DASHSCOPE_API_KEY"):
        export_secret_blocks(env)
    assert "DASHSCOPE_API_KEY" not in env
