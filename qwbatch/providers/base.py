"""The provider protocol: the one seam between the engine and an image API.

Every method raises only errors from :mod:`qwbatch.core.errors`: ``ProviderTransientError`` (and
``ThrottledError``) when the same call may succeed later, ``ProviderAmbiguousError`` when the
request may have been billed but the answer was lost, ``ProviderError`` / ``ModerationError``
/ ``ResultExpiredError`` when retrying cannot help.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from qwbatch.core.types import ProviderResult, RenderRequest


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One row of the provider's task listing. ``submitted_at`` is POSIX seconds, if known."""

    task_id: str
    status: str | None = None
    submitted_at: float | None = None


class TaskListing(list[TaskInfo]):
    """The rows of a task listing. ``complete`` is False when reading stopped before the
    listing's end (a page cap): a task missing from it may still exist."""

    def __init__(self, tasks: Iterable[TaskInfo] = (), *, complete: bool = True) -> None:
        super().__init__(tasks)
        self.complete = complete


class Provider(Protocol):
    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        """One synchronous call (multimodal-generation): generation, or editing of ``images``.

        ``images`` are ready-to-send strings (``https://…`` or ``data:image/png;base64,…``) in
        the order the prompt refers to them ("Image 1/2/3").
        """
        ...

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        """Create an async task; return its task id (a handle :meth:`wait_task` takes).

        ``images`` are edit inputs, as for :meth:`generate` (providers whose every call is a
        task, such as BFL's, edit this way).
        """
        ...

    async def wait_task(self, task_id: str) -> ProviderResult:
        """Poll ``GET /tasks/{id}`` until the task ends; its result, or an error."""
        ...

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        """Tasks of ``model`` submitted between ``start`` and ``end`` (POSIX seconds), and
        whether that is all of them.

        Used to find a task whose creation answer was lost (see :mod:`qwbatch.render.recovery`).
        """
        ...

    async def download(self, url: str) -> bytes:
        """The bytes behind a result URL (``ResultExpiredError`` when it has expired)."""
        ...
