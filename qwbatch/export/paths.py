"""``--path-template``: where the ``files`` format puts each image, from its record.

A template is a relative path with ``{FIELD}`` placeholders: a catalog column
(``{row_id}``, ``{model}``…), a tag (``{tag.campaign}``), ``{k}`` (the image's number in its
row, from 1), ``{split}`` or ``{name}`` (the default sample name). Each value is made one
safe path segment (:func:`qwbatch.storage.stores.sanitize_key_part`: a value that had to
change gets a hash of the original, so two values never share a segment); the literal text
between placeholders is kept, ``/`` included, and the path must end in ``.png``::

    PathTemplate("{tag.campaign}/{tag.channel}/{row_id}-{k}.png")

Every selected image's path is worked out before anything is written
(:func:`check_paths`): a field a row lacks, or two images given one path, is refused with
the rows named. Numbering clashes away would make a name depend on which other rows were
selected; refusing keeps a path a function of the record alone.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

from qwbatch.core.errors import ConfigError, StorageError
from qwbatch.export.samples import Sample, field_value
from qwbatch.storage.stores import sanitize_key_part, validate_key

#: Fields a template may name besides catalog columns and tags.
EXTRA_FIELDS = ("k", "split", "name")
#: Keys in the target that an export owns; no template may produce them.
RESERVED = ("index.csv", "finals.zip")
_SHOWN = 5


class PathTemplate:
    """A parsed ``--path-template``; :meth:`path` fills it from one sample."""

    def __init__(self, template: str, *, work_prefix: str) -> None:
        self.template = template
        self._work_prefix = work_prefix
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(f"bad path template {template!r}: {exc}") from exc
        self._parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parts:
            if spec or conversion:
                raise ConfigError(
                    f"bad path template {template!r}: write {{{field}}}, without ':' or '!'"
                )
            if field == "":
                raise ConfigError(f"bad path template {template!r}: an empty {{}} names no field")
            self._parts.append((literal, field))
        self.fields = tuple(f for _, f in self._parts if f is not None)
        if not self.fields:
            raise ConfigError(f"path template {template!r} names no field: every image would clash")
        if not template.endswith(".png"):
            raise ConfigError(f"path template {template!r} must end with .png")

    def path(self, sample: Sample) -> str:
        """``sample``'s path; ConfigError naming the row when a field is missing or empty."""
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is not None:
                value = self._value(sample, field)
                if value in (None, ""):
                    raise ConfigError(
                        f"row {sample.record['row_id']!r} has no {field!r} for path template "
                        f"{self.template!r}: fill it, or --filter the row out"
                    )
                out.append(sanitize_key_part(str(value), max_length=96))
        path = "".join(out)
        try:
            validate_key(path)
        except StorageError as exc:
            raise ConfigError(f"path template {self.template!r} gives {path!r}: {exc}") from exc
        if path in RESERVED or path.startswith(self._work_prefix):
            raise ConfigError(f"path template {self.template!r} gives {path!r}, a reserved name")
        return path

    @staticmethod
    def _value(sample: Sample, field: str) -> Any:
        if field == "k":
            return int(sample.record["image_index"]) + 1
        if field == "split":
            return sample.split
        if field == "name":
            return sample.name
        return field_value(sample.record, field)


def check_paths(template: PathTemplate, samples: Iterable[Sample]) -> None:
    """Refuse (ConfigError) when a sample lacks a field or two samples share a path."""
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for sample in samples:
        path = template.path(sample)
        where = f"{sample.record['row_id']!r} image {sample.record['image_index']}"
        if path in seen:
            clashes.append(f"{path} ({seen[path]} and {where})")
        else:
            seen[path] = where
    if clashes:
        more = f" and {len(clashes) - _SHOWN} more" if len(clashes) > _SHOWN else ""
        raise ConfigError(
            f"path template {template.template!r} gives {len(clashes)} image(s) a path another "
            f"image has: {'; '.join(clashes[:_SHOWN])}{more}; add a field such as {{row_id}} "
            "or {k}"
        )
