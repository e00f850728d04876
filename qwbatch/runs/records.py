"""A run's records in its store, and which run a new invocation should resume.

A run keeps, under ``runs/`` in DEST (the keys are :mod:`qwbatch.storage.layout`'s): its plan,
written once planning has finished; its shard files (:mod:`qwbatch.plan.shards`) and their
results (:mod:`qwbatch.render.shard_results`); the journal of unfinished shards
(:mod:`qwbatch.render.journal`); the last attempt's summary (``left`` > 0: stopped); and one
empty index object, keyed by what the run renders.

Resume is by run id (``qwbatch run … --resume RUN_ID``) or automatic: a run of the same
manifest (same bytes, same default model, same strictness) into the same DEST that has no
summary, or whose summary says work was left, is resumed instead of starting a new run.
Finished shards are not run again; unfinished ones replay their journal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwbatch import budget as budgets
from qwbatch.core.costs import ZERO, CostLine, Estimate, PriceTable
from qwbatch.core.errors import ConfigError, ManifestError, ObjectNotFoundError
from qwbatch.manifest.files import S3ManifestFile, is_remote, manifest_files
from qwbatch.plan import Plan
from qwbatch.render.journal import read_run_journal
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore

if TYPE_CHECKING:
    from qwbatch.core.settings import Settings


def manifest_fingerprint(
    manifest: str | Path,
    *,
    default_model: str,
    strict: bool,
    options: str = "",
    settings: Settings | None = None,
) -> str:
    """A short hash of what a run renders: the manifest's bytes (every part file of a
    folder, with its name) and the options that change its requests (``options``: any
    other, as text). An ``s3://`` manifest is identified by each object's key, size and
    etag (the store's own content hash), so nothing is downloaded for it here."""
    digest = hashlib.sha256(f"{default_model}\0{strict}\0{options}\0".encode())
    if is_remote(manifest):
        for file in manifest_files(manifest, settings=settings):
            assert isinstance(file, S3ManifestFile)  # is_remote → S3 files only
            digest.update(f"{file.key}\0{file.size}\0{file.etag}\0".encode())
        return digest.hexdigest()[:32]
    path = Path(manifest)
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
    return digest.hexdigest()[:32]


# -- plans ------------------------------------------------------------------------------------


def start_run(store: ObjectStore, run_id: str, fingerprint: str) -> None:
    """Mark that ``run_id`` renders ``fingerprint``: written once its plan is made, before its
    plan is saved and before anything is sent."""
    store.put(layout.index_key(fingerprint, run_id), b"", content_type="text/plain")


def save_plan(store: ObjectStore, plan: Plan, fingerprint: str) -> None:
    body = {"fingerprint": fingerprint, "plan": _encode(plan)}
    store.put(layout.plan_key(plan.run_id), _json(body), content_type="application/json")


def load_plan(store: ObjectStore, run_id: str) -> tuple[Plan, str] | None:
    """The run's plan and the fingerprint it was made for; None if planning never finished."""
    body = _load(store, layout.plan_key(run_id))
    if body is None:
        return None
    plan = _decode(body["plan"])
    if not isinstance(plan, Plan):
        raise ConfigError(f"{store.uri(layout.plan_key(run_id))} does not hold a plan")
    return plan, str(body["fingerprint"])


# A plan holds money (Decimal) and small dataclasses (an estimate, a budget); JSON keeps them
# exactly with tags, and only these classes are ever built back from a store's bytes.
_PLAN_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Plan, Estimate, CostLine, budgets.BudgetPolicy)
}


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if is_dataclass(value) and not isinstance(value, type):
        if type(value).__name__ not in _PLAN_CLASSES:
            raise TypeError(f"cannot save a {type(value).__name__} in a plan")
        return {
            "$type": type(value).__name__,
            "fields": {f.name: _encode(getattr(value, f.name)) for f in fields(value)},
        }
    if isinstance(value, Mapping):  # a dict, or an estimate's TagLines
        return {"$map": [[key, _encode(item)] for key, item in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$decimal" in value:
        return Decimal(value["$decimal"])
    if "$map" in value:
        return {key: _decode(item) for key, item in value["$map"]}
    cls = _PLAN_CLASSES.get(value.get("$type", ""))
    if cls is None:
        raise ConfigError(f"unknown value in a saved plan: {str(value)[:80]}")
    known = {f.name for f in fields(cls)}
    return cls(**{k: _decode(v) for k, v in value["fields"].items() if k in known})


def run_exists(store: ObjectStore, run_id: str, fingerprint: str) -> bool:
    return store.exists(layout.index_key(fingerprint, run_id))


# -- money spent by earlier attempts ----------------------------------------------------


def spent_so_far(store: ObjectStore, run_id: str, prices: PriceTable) -> Decimal:
    """What a run's earlier attempts spent or may have spent, for its budget on resume.

    The catalog's cost and possible cost under the run id, with each unfinished shard counted
    from its journal instead of its (partial) part: finished requests' records, answers not
    yet harvested, tasks the provider holds, and calls a crash cut off (possible spend).
    """
    total = budgets.spent_by_run(store, run_id)
    for label, state in read_run_journal(store, run_id).items():
        total -= budgets.spent_in_part(store, layout.part_key(run_id, label))
        for key, request in state.requests.items():
            if request.finished is not None:
                total += sum(
                    (Decimal(str(r.cost)) + Decimal(str(r.possible_cost or 0.0)))
                    for r in request.finished.records
                )
                continue
            if not request.calls:
                continue
            last = request.calls[-1]
            price = prices.unit_price(last.model) or ZERO
            total += state.prior_ambiguous(key) * last.n * price
            if last.state == "answered" and last.result is not None:
                reported = last.result.cost
                total += (
                    Decimal(str(reported))
                    if reported is not None
                    else last.result.billed_images * price
                )
            elif last.state == "accepted" or (last.state == "sent" and last.endpoint == "async"):
                total += last.n * price  # a task that may yet bill, found or not
    return max(total, ZERO)


# -- finding a run to resume ------------------------------------------------------------------


def is_finished(store: ObjectStore, run_id: str) -> bool:
    """Whether the run's last attempt finished with nothing left."""
    body = _load(store, layout.summary_key(run_id))
    return body is not None and not body.get("left")


def has_started(store: ObjectStore, run_id: str) -> bool:
    """Whether the run has rendered anything yet: a shard in its journal, or one finished
    (its result file beside its shard file). A run planned by one process and rendered by
    the next is started there, not resumed."""
    if next(iter(store.list(layout.journal_prefix(run_id))), None) is not None:
        return True
    return any(layout.is_shard_result(key) for key in store.list(layout.shards_prefix(run_id)))


def find_unfinished(store: ObjectStore, fingerprint: str) -> str | None:
    """The newest run of ``fingerprint`` in ``store`` that has not finished, if any."""
    prefix = layout.index_prefix(fingerprint)
    run_ids = sorted((key[len(prefix) :] for key in store.list(prefix)), reverse=True)
    return next((run_id for run_id in run_ids if not is_finished(store, run_id)), None)


def choose_run(
    store: ObjectStore,
    fingerprint: str,
    *,
    run_id: str | None,
    resume: str | None,
    auto_resume: bool,
) -> tuple[str | None, Plan | None]:
    """Which run this invocation continues: ``(run_id, plan)``.

    - ``resume``: that run; ConfigError if DEST holds no run of that id for this manifest;
    - ``run_id``: that run, resumed if it exists (ConfigError if it renders another manifest);
    - otherwise, with ``auto_resume``: the newest unfinished run of this manifest.

    ``plan`` is None when planning must (re)run; ``run_id`` is None for a brand-new run.
    """
    wanted = resume or run_id
    if wanted is not None:
        loaded = load_plan(store, wanted)
        if loaded is not None:
            plan, planned_for = loaded
            if planned_for != fingerprint:
                raise ConfigError(
                    f"run {wanted} in {store.root_uri} rendered another manifest (or other "
                    "options); rerun without --resume/--run-id to start a new run"
                )
            return wanted, plan
        if resume is not None and not run_exists(store, resume, fingerprint):
            raise ConfigError(f"no run {resume} of this manifest in {store.root_uri}")
        return wanted, None
    if auto_resume:
        found = find_unfinished(store, fingerprint)
        if found is not None:
            loaded = load_plan(store, found)
            return found, loaded[0] if loaded else None
    return None, None


def _json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _load(store: ObjectStore, key: str) -> Any:
    try:
        return json.loads(store.get(key))
    except ObjectNotFoundError:
        return None
