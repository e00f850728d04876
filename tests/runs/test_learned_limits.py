"""The learned request limit is kept in DEST and the next run starts near it."""

from __future__ import annotations

import json
from pathlib import Path

from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.limits import LimiterRegistry
from qwbatch.limits.learning import HOLD, Learned
from qwbatch.runs import learned_limits
from qwbatch.storage.layout import learned_limit_key
from qwbatch.storage.stores import LocalStore

TABLE = ModelTable.load()
MODEL = "qwen-image-2.0"


def settings(**extra: object) -> Settings:
    return Settings(
        dashscope_base_url="http://127.0.0.1:9/api/v1", shared_limits="off", rps=16.0, **extra
    )


def test_a_learned_limit_is_kept_in_dest_and_the_next_run_starts_near_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "dest")
    first_run = LimiterRegistry()
    assert learned_limits.load(store, settings(), TABLE, first_run) == {}
    limiter = first_run.for_model(TABLE.get(MODEL), settings())
    limiter.on_throttle()  # 429s began at 16 req/s
    learned = limiter.learned().learned
    assert learned is not None
    kept = learned_limits.save(store, settings(), first_run)
    assert set(kept) == {MODEL}
    key = learned_limit_key("127.0.0.1:9", MODEL)
    assert json.loads(store.get(key))["learned"] == learned

    next_run = LimiterRegistry()
    found = learned_limits.load(store, settings(), TABLE, next_run)
    assert found[MODEL].learned == learned
    again = next_run.for_model(TABLE.get(MODEL), settings())
    assert again.learning() == f"learned {learned:.2f} req/s"
    assert again.current_rate() == HOLD * learned  # near it, not at the configured 16
    # A model that learned nothing is not kept.
    other = next_run.for_model(TABLE.get("qwen-image-max"), settings())
    assert other.learning() == "configured"
    assert set(learned_limits.save(store, settings(), next_run)) == {MODEL}


def test_a_limit_learned_above_a_lower_configured_figure_is_not_used(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "dest")
    key = learned_limit_key("127.0.0.1:9", MODEL)
    store.put(key, json.dumps(Learned(rate=20.0, learned=20.0).to_json()).encode())
    registry = LimiterRegistry()
    learned_limits.load(store, settings(), TABLE, registry)
    limiter = registry.for_model(TABLE.get(MODEL), settings())
    assert limiter.current_rate() == 16.0  # the configured figure is a ceiling
    assert limiter.learning() == "configured"


def test_auto_starts_from_the_rate_an_earlier_run_reached(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "dest")
    key = learned_limit_key("127.0.0.1:9", MODEL)
    store.put(key, json.dumps(Learned(rate=30.0, learned=None).to_json()).encode())
    registry = LimiterRegistry()
    auto = Settings(dashscope_base_url="http://127.0.0.1:9/api/v1", shared_limits="off", rps="auto")
    learned_limits.load(store, auto, TABLE, registry)
    limiter = registry.for_model(TABLE.get(MODEL), auto)
    assert limiter.current_rate() == 30.0
    assert limiter.learning() == "auto, searching upward"


def test_an_unreadable_value_is_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "dest")
    store.put(learned_limit_key("127.0.0.1:9", MODEL), b"{not json")
    registry = LimiterRegistry()
    assert learned_limits.load(store, settings(), TABLE, registry) == {}
    assert registry.for_model(TABLE.get(MODEL), settings()).learning() == "configured"
