"""RunOptions: the one list of a run's options, and the flat signatures that feed it.

``qwbatch.run``, ``qwbatch.estimate`` and the ``render-manifest`` flow keep keyword
parameters (a notebook's call, a deployment's ``-p``) and pick their options out of them by
name; these tests fail when a parameter and its option drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
from decimal import Decimal

import pytest

import qwbatch
from flows.render import render_manifest
from qwbatch.budget.policy import BudgetPolicy
from qwbatch.core.errors import ConfigError
from qwbatch.runs.options import RunOptions

FIELDS = {field.name: field.default for field in dataclasses.fields(RunOptions)}


def _keywords(function: object) -> dict[str, object]:
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(
    ("function", "not_options"),
    [
        (qwbatch.run, {"quiet", "new_run", "rerender_rejected"}),
        (qwbatch.estimate, {"out"}),
        (render_manifest.fn, {"shard_deployment", "shards_per_run", "digest"}),
    ],
    ids=["run", "estimate", "render-manifest"],
)
def test_every_keyword_parameter_is_an_option_with_its_default(
    function: object, not_options: set[str]
) -> None:
    keywords = _keywords(function)
    options = {name: default for name, default in keywords.items() if name not in not_options}
    assert options == {name: FIELDS[name] for name in options}


def test_the_api_and_the_flow_take_every_option() -> None:
    # run takes auto_resume as its opposite, new_run (False: resume).
    assert set(FIELDS) - set(_keywords(qwbatch.run)) == {"auto_resume"}
    assert set(FIELDS) <= set(_keywords(render_manifest.fn))
    assert RunOptions().flow_parameters() == FIELDS


def test_pick_takes_options_by_name_and_leaves_the_rest() -> None:
    picked = RunOptions.pick({"budget": 5, "quiet": True, "manifest": "m"}, auto_resume=False)
    assert picked == RunOptions(budget=5, auto_resume=False)


def test_options_as_settings_and_budget_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWBATCH_SHARD_SIZE", raising=False)
    options = RunOptions(model="flux-2-pro", shard_size=7, target_size="300*250", budget=2.5)
    settings = options.settings()
    assert (settings.default_model, settings.shard_size) == ("flux-2-pro", 7)
    assert settings.default_target_size == "300*250"
    assert options.policy() == BudgetPolicy(Decimal("2.5"), "refuse")
    assert RunOptions().policy() is None
    with pytest.raises(ConfigError, match="target-size"):
        RunOptions(target_size="big").settings()
