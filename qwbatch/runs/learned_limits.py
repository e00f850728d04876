"""The request limits learned by the limiters, kept in DEST so that the next run starts near
them (``storage.layout.learned_limit_key``: one small JSON object per model and account).

:func:`load` seeds the process's limiters (once per DEST and account in a process); a run's
shards call it before they send and :func:`save` when they end. Neither fails a run: a
value that cannot be read or written is logged and the run goes on from the configured
figure. With a Prefect server, workers also share what they learn through a Prefect
variable (:mod:`qwbatch.limits.shared`), which a limiter reads when it starts and which wins
over the value kept here (it is fresher).
"""

from __future__ import annotations

import json
import logging
import threading

from qwbatch.core.errors import ObjectNotFoundError, QwBatchError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.limits import LIMITERS, LimiterRegistry
from qwbatch.limits.learning import Learned
from qwbatch.limits.registry import limit_scope
from qwbatch.storage.layout import learned_limit_key
from qwbatch.storage.stores import ObjectStore

log = logging.getLogger(__name__)

_LOADED: set[tuple[int, str, str]] = set()
_LOADED_LOCK = threading.Lock()


def load(
    store: ObjectStore,
    settings: Settings,
    table: ModelTable,
    registry: LimiterRegistry = LIMITERS,
) -> dict[str, Learned]:
    """Seed ``registry`` with what earlier runs learned for the models of ``table`` on this
    account, from ``store``; what was found, by model. Read once per process per store and
    account (later calls return {})."""
    scope = limit_scope(settings)
    with _LOADED_LOCK:
        if (id(registry), store.root_uri, scope) in _LOADED:
            return {}
        _LOADED.add((id(registry), store.root_uri, scope))
    found = {}
    for model in table.names():
        key = learned_limit_key(scope, model)
        try:
            learned = Learned.from_json(json.loads(store.get(key)))
        except ObjectNotFoundError:
            continue
        except (QwBatchError, ValueError) as exc:
            log.warning("the limit learned for %s is not readable (%s): not used", model, exc)
            continue
        if learned is not None:
            registry.seed(scope, model, learned)
            found[model] = learned
    return found


def save(
    store: ObjectStore, settings: Settings, registry: LimiterRegistry = LIMITERS
) -> dict[str, Learned]:
    """Keep in ``store`` what the limiters of this account learned; what was kept."""
    scope = limit_scope(settings)
    learned = registry.learned(scope)
    for model, now in learned.items():
        data = json.dumps(now.to_json()).encode()
        try:
            store.put(learned_limit_key(scope, model), data, content_type="application/json")
        except QwBatchError as exc:
            log.warning("the limit learned for %s was not kept (%s)", model, exc)
    return learned
