"""The Black Forest Labs FLUX client: submit a task, poll its ``polling_url``, harvest at once.

Every call is a task (generation and edits alike, see ``docs/providers/bfl.md``):

- ``POST {base}/v1/{model}`` with ``prompt``, ``width``/``height`` (Kontext: ``aspect_ratio``),
  ``seed``, edit inputs as ``input_image``, ``input_image_2`` … and the row's ``params``;
  the answer is ``{id, polling_url, cost, input_mp, output_mp}`` (``cost`` in credits,
  1 credit = 0.01 USD, checked against the model table's price).
- ``GET polling_url`` until ``status`` is final: ``Ready`` (``result.sample`` is a signed URL
  valid for ten minutes: the engine downloads it at once), ``Request Moderated`` /
  ``Content Moderated`` (not charged), ``Error`` / ``Failed``, ``Task not found`` (also an
  expired task).

There is no task listing, no cancel and no idempotency key: a submission whose answer was
lost cannot be found again, so it stays ambiguous (possible spend), never silently re-sent.
The task handle the engine journals is ``id|credits|polling_url``, so a resumed run polls the
URL it was given and knows what the task cost. The key (``x-key``) goes only to the base
URL's host and to hosts under ``bfl.ai``; result downloads carry no key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode, urlsplit

import httpx

from qwbatch.core.costs import usd_image_price
from qwbatch.core.errors import (
    ModerationError,
    ProviderAmbiguousError,
    ProviderError,
    QuotaExhaustedError,
    ResultExpiredError,
)
from qwbatch.core.model_table import ModelTable, parse_size
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderImage, ProviderResult, RenderRequest
from qwbatch.providers.base import TaskListing
from qwbatch.providers.http_calls import (
    as_dict,
    as_number,
    as_str,
    download_error,
    json_object,
    parse_retry_after,
    path_of,
    send,
    snippet,
    status_error,
    unreadable_answer,
)
from qwbatch.providers.http_provider import HttpProvider, settings_timeout
from qwbatch.providers.polling import PollSchedule

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider

_log = logging.getLogger(__name__)

#: USD per BFL credit.
CREDIT_USD: Final = Decimal("0.01")
_MODERATED: Final = frozenset({"Request Moderated", "Content Moderated"})
_FAILED: Final = frozenset({"Error", "Failed"})
_EXPIRED_STATUSES: Final = frozenset({403, 404, 410})
#: BFL's answers by status, as error codes (429: too many active tasks; 422: a bad body).
_CODES: Final = {429: "ActiveTaskLimit", 422: "ValidationError"}
#: Reported and table prices may differ by rounding (credits have two decimals).
_PRICE_TOLERANCE: Final = Decimal("0.0001")


class BflProvider(HttpProvider):
    """The :class:`~qwbatch.providers.base.Provider` for BFL's FLUX API.

    ``client`` is used as given; it is closed only when :meth:`from_settings` made it.
    Poll intervals and the deadline are seconds; ``sleep`` and ``clock`` are seams for tests.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        table: ModelTable,
        poll_interval_s: float = 1.0,
        poll_max_interval_s: float = 5.0,
        task_deadline_s: float = 900.0,
        download_timeout_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        owns_client: bool = False,
    ) -> None:
        self._polls = PollSchedule(
            poll_interval_s, poll_max_interval_s, task_deadline_s, sleep=sleep, clock=clock
        )
        super().__init__(client=client, base_url=base_url, api_key=api_key, owns_client=owns_client)
        self._table = table
        self._download_timeout_s = download_timeout_s
        #: Set once BFL answered 402: nothing more is sent (credits are gone).
        self._out_of_credits: QuotaExhaustedError | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, table: ModelTable, client: httpx.AsyncClient | None = None
    ) -> BflProvider:
        """A provider for ``settings``; it owns (and closes) the client it creates."""
        return cls(
            client=client or httpx.AsyncClient(timeout=settings_timeout(settings)),
            owns_client=client is None,
            base_url=settings.bfl_base_url,
            api_key=settings.bfl_key(),
            table=table,
            poll_interval_s=min(settings.poll_interval_s, 1.5),
            poll_max_interval_s=settings.poll_max_interval_s,
            task_deadline_s=settings.task_deadline_s,
            download_timeout_s=settings.download_timeout_s,
        )

    def __repr__(self) -> str:
        return f"BflProvider(base_url={self._base_url!r}, api_key=<hidden>)"

    # -- the Provider protocol ---------------------------------------------------------------

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        """Submit and wait in one call (the engine journals the task in between instead)."""
        return await self.wait_task(await self.submit_task(request, images))

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        """Submit one task; its handle ``id|credits|polling_url`` (see the module doc)."""
        spec = self._table.get(request.model)
        if request.n != 1:
            raise ProviderError(f"{request.model} makes one image per task", code="InvalidN")
        body = self._body(request, images, kontext=spec.size_rule == "any")
        url = f"{self._base_url}/v1/{request.model}"
        data = await self._call("POST", url, billable=True, body=body)
        task_id = as_str(data.get("id"))
        if not task_id:
            raise ProviderAmbiguousError(f"POST {path_of(url)}: 200 without a task id")
        polling_url = as_str(data.get("polling_url")) or (
            f"{self._base_url}/v1/get_result?{urlencode({'id': task_id})}"
        )
        credits = as_number(data.get("cost"))
        if credits is not None:
            self._check_price(request, data, Decimal(str(credits)) * CREDIT_USD)
        return f"{task_id}|{'' if credits is None else repr(credits)}|{polling_url}"

    async def wait_task(self, task_id: str) -> ProviderResult:
        """Poll the task's ``polling_url`` until its status is final; the result or an error.

        A failed poll (429, 5xx, transport) is polled again: polling is free. Past the
        deadline this raises :class:`TaskDeadlineError` (the task is not cancelled: BFL has
        no cancel).
        """
        bare_id, credits, polling_url = _split_handle(task_id)

        def outcome(data: dict[str, Any]) -> ProviderResult | str:
            status = as_str(data.get("status")) or "?"
            if status == "Ready":
                return self._ready(bare_id, credits, data)
            self._raise_final(bare_id, status, data)
            return status

        poll = functools.partial(self._call, "GET", polling_url, billable=False)
        return await self._polls.until_final(poll, outcome, task=bare_id, handle=task_id)

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        """BFL has no task listing: an empty one, marked incomplete (it proves nothing)."""
        del model, start, end
        return TaskListing([], complete=False)

    async def download(self, url: str) -> bytes:
        """The bytes of ``result.sample`` (no key sent); :class:`ResultExpiredError` once its
        ten minutes have passed."""
        response = await send(
            self._client, "GET", url, headers={}, billable=False, timeout_s=self._download_timeout_s
        )
        if response.is_success:
            return response.content
        expired = response.status_code in _EXPIRED_STATUSES
        raise download_error(
            response, url, expired="the sample expired (BFL keeps it 10 min)" if expired else None
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _body(
        self, request: RenderRequest, images: Sequence[str], *, kontext: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, "seed": request.seed}
        size = parse_size(request.size) if request.size else None
        if size is not None and kontext:
            divisor = math.gcd(*size)
            body["aspect_ratio"] = f"{size[0] // divisor}:{size[1] // divisor}"
        elif size is not None:
            body["width"], body["height"] = size
        for index, image in enumerate(images):
            body["input_image" if index == 0 else f"input_image_{index + 1}"] = _bfl_image(image)
        body.update(request.params_dict())
        return body

    def _check_price(self, request: RenderRequest, data: dict[str, Any], reported: Decimal) -> None:
        """Warn when BFL's quoted cost is not what the model table's formula gives for the
        megapixels BFL reports (``input_mp``, ``output_mp``; the request's size without them)."""
        spec = self._table.get(request.model)
        output_mp, input_mp = as_number(data.get("output_mp")), as_number(data.get("input_mp"))
        if spec.pricing_rule == "megapixel" and output_mp is not None:
            first, per = Decimal(str(spec.pricing.first_mp)), Decimal(str(spec.pricing.per_mp))
            extra = max(Decimal(str(output_mp)) - 1, Decimal(0)) + Decimal(str(input_mp or 0))
            expected: Decimal | None = first + extra * per
        else:
            expected = usd_image_price(spec, request.size)
        if expected is not None and abs(expected - reported) > _PRICE_TOLERANCE:
            _log.warning(
                "BFL quoted %s USD for %s (%s); the model table's price is %s USD: "
                "update the price table",
                reported,
                request.model,
                request.size or "default size",
                float(round(expected, 6)),
            )

    def _ready(self, task_id: str, credits: float | None, data: dict[str, Any]) -> ProviderResult:
        result = as_dict(data.get("result"))
        sample = as_str(result.get("sample"))
        if sample is None:
            raise ProviderError(f"task {task_id} Ready without result.sample", code="NoSample")
        cost = None if credits is None else float(Decimal(str(credits)) * CREDIT_USD)
        width, height = as_number(result.get("width")), as_number(result.get("height"))
        return ProviderResult(
            images=(ProviderImage(url=sample, index=0),),
            task_id=task_id,
            billed_images=1,
            width=int(width) if width else None,
            height=int(height) if height else None,
            cost=cost,
        )

    @staticmethod
    def _raise_final(task_id: str, status: str, data: dict[str, Any]) -> None:
        """Raise for a final status other than Ready; return for one still running."""
        context = f"task {task_id} {status}"
        details = snippet(str(data.get("details") or ""), 160)
        if status in _MODERATED:
            raise ModerationError(
                f"{context}: {details or 'blocked'}", code=status.replace(" ", "")
            )
        if status in _FAILED:
            raise ProviderError(f"{context}: {details or 'the task failed'}", code="TaskFailed")
        if status == "Task not found":
            raise ResultExpiredError(
                f"{context}: unknown or expired (BFL keeps results a short time)",
                code="TaskNotFound",
            )

    async def _call(
        self, method: str, url: str, *, billable: bool, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call: its JSON object, or the classified error."""
        if billable and self._out_of_credits is not None:
            raise self._out_of_credits
        if not self._may_carry_key(url):
            raise ProviderError(
                f"{method} {path_of(url)}: the polling URL names an unexpected host; "
                "not sending the key there",
                code="UnexpectedHost",
            )
        headers = {"x-key": self._api_key, "Accept": "application/json"}
        response = await send(
            self._client, method, url, headers=headers, billable=billable, json=body
        )
        what = f"{method} {path_of(url)}"
        data = json_object(response)
        if response.is_success and data is not None:
            return data
        if response.is_success:
            raise unreadable_answer(what, response.status_code, billable=billable)
        raise self._error(response, data or {}, what, billable=billable)

    def _error(
        self, response: httpx.Response, data: dict[str, Any], what: str, *, billable: bool
    ) -> Exception:
        status = response.status_code
        message = self._redact(_message(data) or snippet(response.text))
        text = f"{what}: HTTP {status}: {message}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 402:
            error = QuotaExhaustedError(text, code="InsufficientCredits", status_code=status)
            self._out_of_credits = error
            return error
        if status == 404 and not billable:
            return ResultExpiredError(text, code="TaskNotFound", status_code=status)
        code = _CODES.get(status, f"HTTP{status}")
        return status_error(status, text, code=code, retry_after=retry_after)

    def _may_carry_key(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        return host == urlsplit(self._base_url).hostname or host.endswith(".bfl.ai")


def _message(data: dict[str, Any]) -> str | None:
    """The reason in either documented error body: ``{"detail": [{loc, msg}]}`` (422) or
    ``{"error", "message", "details"}``."""
    detail = data.get("detail")
    if isinstance(detail, list):
        parts = []
        for item in map(as_dict, detail):
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts) or None
    return as_str(detail) or as_str(data.get("message")) or as_str(data.get("error"))


def _bfl_image(image: str) -> str:
    """An input as BFL takes it: an https URL, or the base64 of a ``data:`` URI's bytes."""
    if image.startswith("data:") and "," in image:
        return image.split(",", 1)[1]
    return image


def _split_handle(handle: str) -> tuple[str, float | None, str]:
    task_id, credits, polling_url = handle.split("|", 2)
    return task_id, float(credits) if credits else None, polling_url


if TYPE_CHECKING:
    _conforms: type[Provider] = BflProvider
