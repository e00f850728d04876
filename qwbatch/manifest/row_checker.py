"""The row checker: one manifest row's cells checked against its model's rules, one call a row.

Each row is checked against its model's rules in the model table (tasks, sizes, ``n``,
prompt lengths in characters); the first problem found rejects the row with a
``Reject(row_number, row_id, column, reason)`` and the good rows go on. A later row whose
``id`` was already seen is rejected as a duplicate even when the first occurrence was
itself rejected for another reason: ids are unique per manifest
(``qwbatch.manifest.duplicates``). Edit inputs are counted, then resolved last, once per
distinct URI within a read (hashing a file is the costly check).

Most generate rows are checked column-wise instead (``qwbatch.manifest.vector``), with the
setting :meth:`RowChecker.vector_setting` gives; this checker takes the rest.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from qwbatch.core.errors import PermanentError
from qwbatch.core.keys import SEED_MAX, RequestFields, key_and_seed
from qwbatch.core.model_table import ModelSpec, ModelTable, parse_size, parse_target_size
from qwbatch.core.types import Mode, RenderRequest
from qwbatch.manifest.columns import Bad, Params, Tags
from qwbatch.manifest.duplicates import DuplicateIds
from qwbatch.manifest.rejects import Reject
from qwbatch.manifest.resolvers import InputDigest, InputResolver
from qwbatch.manifest.vector import Setting

#: Longest accepted row id, in characters.
MAX_ID_CHARS: Final = 256
#: Input images per DashScope edit request (docs/providers/dashscope.md §3.5); every model
#: row says its own (``max_inputs``: FLUX.2 8, GPT Image 16).
MAX_INPUT_IMAGES: Final = 3

_MODES: Final[dict[str, Mode]] = {"generate": "generate", "edit": "edit"}


def _has_control(text: str, allowed: str = "") -> bool:
    # Callers try str.isprintable() first (a fast C check); it is also False for spaces
    # other than " " and for format characters, which ids may hold, hence the categories.
    return any(unicodedata.category(c) == "Cc" and c not in allowed for c in text)


#: Controls a prompt may hold: a prompt may span lines. Any other (NUL, ESC, DEL, C1 …) is
#: refused, as in ids: it is invisible in every report and may reach a terminal or a log.
_PROMPT_WHITESPACE: Final = "\t\n\r"


#: Cached settings before the cache is cleared: distinct (model, mode, size) cells seen.
_SETTINGS_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class RowSetting:
    """What a row's ``model``, ``mode`` and ``size`` cells resolve to, once validated."""

    spec: ModelSpec
    mode: Mode
    size: str | None


class RowChecker:
    """Validate and normalise one row at a time, with caches that live for one read."""

    def __init__(
        self,
        table: ModelTable,
        default_model: str,
        resolve_input: InputResolver,
        duplicates: DuplicateIds,
        default_target_size: str | None = None,
    ) -> None:
        self._table = table
        #: The target size of rows with none of their own (``--target-size``).
        self._default_target = default_target_size
        self._default = table.get(default_model)
        self._resolve = resolve_input
        self._candidates = duplicates.candidates
        #: Repeated id → the row it was first seen at (known up front when the reader reads
        #: a later part of the manifest only; otherwise set as rows are checked).
        self._first_seen: dict[str, int] = dict(duplicates.first_rows)
        # (model, mode, size) cells → setting, or (column, reason) refusing them. Manifests
        # repeat a handful of combinations, so one lookup replaces a dozen checks per row.
        self._settings: dict[tuple[object, object, object], RowSetting | tuple[str, str]] = {}
        self._inputs: dict[str, str | InputDigest | Bad] = {}

    def _setting(
        self,
        model_text: str | Bad | None,
        mode_text: str | Bad | None,
        size_text: str | Bad | None,
    ) -> RowSetting | tuple[str, str]:
        """The row's model spec, mode and ``W*H`` size, or ``(column, reason)`` refusing them."""
        if isinstance(model_text, Bad):
            return "model", f"model {model_text.reason}"
        name = model_text.strip() if model_text else ""
        spec: ModelSpec | None = self._default
        if name:
            spec = self._table.get(name) if name in self._table else None
        if spec is None:
            return "model", self._table.unknown_message(name)
        if spec.shutdown and spec.shutdown <= _today():
            return "model", f"{spec.name} was shut down by its provider on {spec.shutdown}"
        if isinstance(mode_text, Bad):
            return "mode", f"mode {mode_text.reason}"
        mode = _MODES.get((mode_text.strip().lower() if mode_text else "") or "generate")
        if mode is None:
            return "mode", f"mode must be 'generate' or 'edit', got {mode_text!r}"
        if mode not in spec.tasks and mode == "generate":
            return "mode", (
                f"{spec.name} only edits: set mode to 'edit' and give 1 to "
                f"{spec.max_inputs} input_images, or use a model that generates"
            )
        if mode not in spec.tasks:
            edit_models = [n for n in self._table.names() if "edit" in self._table.get(n).tasks]
            return "mode", f"{spec.name} cannot edit; edit models: {', '.join(edit_models)}"
        if isinstance(size_text, Bad):
            return "size", f"size {size_text.reason}"
        if not size_text or not size_text.strip():
            return RowSetting(spec, mode, None)
        try:
            parsed = parse_size(size_text)
        except ValueError:  # digits that int() refuses, such as "²"
            parsed = None
        if parsed is None:
            return "size", f"size {size_text!r} is not of the form W*H (such as 1024*768)"
        size = f"{parsed[0]}*{parsed[1]}"
        problem = spec.size_problem(size)
        return ("size", problem) if problem else RowSetting(spec, mode, size)

    @property
    def candidates(self) -> frozenset[str]:
        """Ids that occur more than once in the manifest."""
        return self._candidates

    def setting(
        self,
        model_text: str | Bad | None,
        mode_text: str | Bad | None,
        size_text: str | Bad | None,
    ) -> RowSetting | tuple[str, str]:
        """What the three cells resolve to (cached), or ``(column, reason)`` refusing them."""
        cells = (model_text, mode_text, size_text)
        setting = self._settings.get(cells)
        if setting is None:
            if len(self._settings) >= _SETTINGS_CACHE_MAX:
                self._settings.clear()
            setting = self._settings[cells] = self._setting(model_text, mode_text, size_text)
        return setting

    def vector_setting(self, model_text: str, mode_text: str, size_text: str) -> Setting | None:
        """The setting of a generate row for the column-wise path; None leaves the rows
        to ``check`` (a reject, or an edit row that needs its inputs resolved)."""
        if self._default_target is not None:  # every row's key and size change: row by row
            return None
        setting = self.setting(model_text or None, mode_text or None, size_text or None)
        if isinstance(setting, tuple) or setting.mode != "generate":
            return None
        spec = setting.spec
        return Setting(
            spec.name,
            setting.mode,
            setting.size,
            spec.prompt_max_chars,
            spec.negative_prompt_max_chars,
            spec.n_max,
        )

    def _input_sha256(self, uri: str) -> str | InputDigest | Bad:
        try:
            return self._inputs[uri]
        except KeyError:
            try:
                result: str | InputDigest | Bad = self._resolve(uri)
            except PermanentError as exc:
                result = Bad(exc.message)
            self._inputs[uri] = result
            return result

    def check(
        self,
        row: int,
        rid: str | Bad | None,
        prompt: str | Bad | None,
        mode_text: str | Bad | None,
        model_text: str | Bad | None,
        negative: str | Bad | None,
        size_text: str | Bad | None,
        n: int | Bad | None,
        seed: int | Bad | None,
        extend: bool | Bad | None,
        watermark: bool | Bad | None,
        images: tuple[str, ...] | Bad | None,
        tags: Tags | Bad | None,
        priority: int | Bad | None = None,
        params: Params | Bad | None = None,
        models: tuple[str, ...] | Bad | None = None,
        expected_text: tuple[str, ...] | Bad | None = None,
        target: str | Bad | None = None,
    ) -> RenderRequest | Reject:
        """The normalised request for one row, or the first reason to refuse it.

        ``models`` is the reader's business (it checks the row once per model, with
        ``model_text`` set); here it is only refused when unreadable."""
        # id: present, printable, bounded, and first of its kind
        if not isinstance(rid, str):
            return Reject(row, None, "id", f"id {'is missing' if rid is None else rid.reason}")
        if not rid or rid.isspace():
            return Reject(row, rid, "id", "id is empty")
        if len(rid) > MAX_ID_CHARS:
            return Reject(
                row,
                rid[:MAX_ID_CHARS] + "…",
                "id",
                f"id has {len(rid)} characters; at most {MAX_ID_CHARS} are allowed",
            )
        if not rid.isprintable() and _has_control(rid):
            return Reject(row, rid, "id", "id contains control characters")
        if rid in self._candidates:
            first = self._first_seen.setdefault(rid, row)
            if first != row:
                return Reject(row, rid, "id", f"duplicate id (first seen at row {first})")

        if not isinstance(prompt, str):
            why = "is missing" if prompt is None else prompt.reason
            return Reject(row, rid, "prompt", f"prompt {why}")
        prompt = prompt.strip()
        if not prompt:
            return Reject(row, rid, "prompt", "prompt is empty")
        if not prompt.isprintable() and _has_control(prompt, _PROMPT_WHITESPACE):
            return Reject(
                row, rid, "prompt", "prompt contains control characters (other than tab, newline)"
            )

        setting = self.setting(model_text, mode_text, size_text)
        if isinstance(setting, tuple):
            return Reject(row, rid, *setting)
        spec, mode = setting.spec, setting.mode

        if len(prompt) > spec.prompt_max_chars:
            return Reject(
                row,
                rid,
                "prompt",
                f"prompt has {len(prompt)} characters; "
                f"{spec.name} allows at most {spec.prompt_max_chars}",
            )
        if isinstance(negative, Bad):
            return Reject(row, rid, "negative_prompt", f"negative_prompt {negative.reason}")
        negative = negative.strip() or None if negative else None
        if negative and not negative.isprintable() and _has_control(negative, _PROMPT_WHITESPACE):
            return Reject(
                row,
                rid,
                "negative_prompt",
                "negative_prompt contains control characters (other than tab, newline)",
            )
        if negative is not None and len(negative) > spec.negative_prompt_max_chars:
            return Reject(
                row,
                rid,
                "negative_prompt",
                f"negative_prompt has {len(negative)} characters; {spec.name} "
                f"allows at most {spec.negative_prompt_max_chars}",
            )
        if n is None:
            n = 1
        elif isinstance(n, Bad):
            return Reject(row, rid, "n", f"n {n.reason}")
        elif n < 1:
            return Reject(row, rid, "n", f"n must be at least 1, got {n}")
        elif n > spec.n_max:
            return Reject(row, rid, "n", f"n={n} but {spec.name} makes at most {spec.n_max}")
        if isinstance(seed, Bad):
            return Reject(row, rid, "seed", f"seed {seed.reason}")
        if seed is not None and not 0 <= seed <= SEED_MAX:
            return Reject(row, rid, "seed", f"seed must be in [0, {SEED_MAX}], got {seed}")
        if isinstance(extend, Bad):
            return Reject(row, rid, "prompt_extend", f"prompt_extend {extend.reason}")
        if isinstance(watermark, Bad):
            return Reject(row, rid, "watermark", f"watermark {watermark.reason}")
        if isinstance(tags, Bad):
            return Reject(row, rid, "tags", f"tags {tags.reason}")
        if isinstance(priority, Bad):
            return Reject(row, rid, "priority", f"priority {priority.reason}")
        if isinstance(models, Bad):
            return Reject(row, rid, "models", f"models {models.reason}")
        checked_params: tuple[tuple[str, object], ...] = ()
        if isinstance(params, Bad):
            return Reject(row, rid, "params", f"params {params.reason}")
        if params:
            outcome = spec.checked_params(params)
            if isinstance(outcome, str):
                return Reject(row, rid, "params", outcome)
            checked_params = outcome
        if isinstance(expected_text, Bad):
            return Reject(row, rid, "expected_text", f"expected_text {expected_text.reason}")
        sizes = _target(target or self._default_target, spec, setting.size)
        if isinstance(sizes, Bad):
            return Reject(row, rid, "target_size", sizes.reason)
        target_size, size = sizes

        # edit inputs: counted, then resolved (last: hashing a file is the costly check)
        input_sha256: tuple[str, ...] = ()
        input_notes: tuple[str, ...] = ()
        if isinstance(images, Bad):
            return Reject(row, rid, "input_images", f"input_images {images.reason}")
        if mode == "generate" and images:
            return Reject(
                row,
                rid,
                "input_images",
                "input_images are given but mode is 'generate'; set mode to 'edit'",
            )
        if mode == "edit":
            count = len(images) if images else 0
            if not 1 <= count <= spec.max_inputs:
                return Reject(
                    row,
                    rid,
                    "input_images",
                    f"mode 'edit' needs 1 to {spec.max_inputs} input_images, got {count}",
                )
            digests = [self._input_sha256(uri) for uri in images or ()]
            for digest in digests:
                if isinstance(digest, Bad):
                    return Reject(row, rid, "input_images", digest.reason)
            resolved = [d for d in digests if not isinstance(d, Bad)]
            input_sha256 = tuple(d if isinstance(d, str) else d.sha256 for d in resolved)
            notes = tuple("" if isinstance(d, str) else d.note for d in resolved)
            input_notes = notes if any(notes) else ()

        watermark = bool(watermark)
        key, seed = key_and_seed(
            RequestFields(
                model=spec.name,
                mode=mode,
                prompt=prompt,
                negative_prompt=negative,
                size=size,
                n=n,
                seed=seed,
                prompt_extend=extend,
                watermark=watermark,
                input_sha256=input_sha256,
                params=checked_params,
                target_size=target_size,
            )
        )
        return RenderRequest(
            row_id=rid,
            row_number=row,
            request_key=key,
            model=spec.name,
            mode=mode,
            prompt=prompt,
            negative_prompt=negative,
            size=size,
            n=n,
            seed=seed,
            prompt_extend=extend,
            watermark=watermark,
            input_images=images or (),
            input_sha256=input_sha256,
            input_notes=input_notes,
            tags=tags or (),
            priority=priority,
            params=checked_params,
            expected_text=expected_text or (),
            target_size=target_size,
        )


def _today() -> str:
    """Today's date in UTC as ``YYYY-MM-DD`` (model shutdown dates compare as text)."""
    return datetime.now(UTC).date().isoformat()


#: Largest side of a delivered image, in pixels.
MAX_TARGET_SIDE: Final = 16384


def _target(
    text: str | Bad | None, spec: ModelSpec, size: str | None
) -> tuple[str | None, str | None] | Bad:
    """``(target_size, size to render)`` for a row's ``target_size`` cell: the normal form
    of the target and the size the model renders it at (the row's own ``size`` if it gave
    one, else the nearest allowed), or Bad saying why the cell cannot be used."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, size
    if isinstance(text, Bad):
        return Bad(f"target_size {text.reason}")
    target = parse_target_size(text)
    if target is None:
        return Bad(f"target_size {text!r} is not of the form W*H or W*H:pad (such as 300*250)")
    if max(target.width, target.height) > MAX_TARGET_SIDE:
        return Bad(f"target_size {text!r}: each side must be at most {MAX_TARGET_SIDE} px")
    return str(target), size if size is not None else spec.render_size_for(target)
