"""The DashScope HTTP client: Qwen-Image generation, editing and async tasks on ``httpx``.

Everything here follows ``docs/providers/dashscope.md``: the sync multimodal-generation call
(§3.1, §3.3, §4.1), the async text2image task and its polling (§3.2, §4.2, §4.3) and the
error table (§5, in :mod:`qwbatch.providers.dashscope_errors`). Every failure leaves as an
error from :mod:`qwbatch.core.errors`; which one depends on whether a retry can help and whether
the provider may already have billed us.

The API key travels only in the ``Authorization`` header of calls to ``base_url``. Error
messages are built here from the method, the URL path and the provider's code and message;
result downloads go to signed OSS URLs without it.

Example::

    async with DashScopeProvider.from_settings(settings) as provider:
        result = await provider.generate(request)
        png = await provider.download(result.images[0].url)
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import httpx
from httpx import USE_CLIENT_DEFAULT

from qwbatch.core.errors import (
    ProviderAmbiguousError,
    ProviderError,
    ProviderTransientError,
    ResultExpiredError,
    TaskDeadlineError,
)
from qwbatch.core.model_table import parse_size
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderImage, ProviderResult, RenderRequest
from qwbatch.providers.aiohttp_transport import AiohttpTransport
from qwbatch.providers.base import TaskInfo, TaskListing
from qwbatch.providers.dashscope_errors import classify_error
from qwbatch.providers.http_calls import (
    BEFORE_SEND,
    USER_AGENT,
    as_dict,
    as_str,
    download_error,
    json_object,
    parse_retry_after,
    path_of,
    snippet,
    unreadable_answer,
)
from qwbatch.providers.http_provider import HttpProvider, settings_timeout
from qwbatch.providers.polling import PollSchedule

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider

__all__ = ["DashScopeProvider", "TaskDeadlineError", "classify_error", "parse_retry_after"]

GENERATION_PATH: Final = "/services/aigc/multimodal-generation/generation"
SYNTHESIS_PATH: Final = "/services/aigc/text2image/image-synthesis"
TASKS_PATH: Final = "/tasks"
#: Task listing: rows per page, and pages read at most (recovery needs recent tasks only).
LIST_PAGE_SIZE: Final = 100
LIST_MAX_PAGES: Final = 20

#: Task states that end polling; anything else (PENDING, RUNNING, SUSPENDED…) is polled again.
_FINAL_STATES: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
_EXPIRED_STATUSES: Final = frozenset({403, 404, 410})
_EXPIRED_MARKERS: Final = ("Request has expired", "<Code>AccessDenied</Code>")


class DashScopeProvider(HttpProvider):
    """The :class:`~qwbatch.providers.base.Provider` for DashScope's native HTTP API.

    ``client`` is used as given (timeouts, limits, transport); the provider closes it only
    when :meth:`from_settings` created it. Poll intervals and the task deadline are seconds;
    ``sleep`` and ``clock`` are seams for tests.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        poll_interval_s: float = 2.0,
        poll_max_interval_s: float = 10.0,
        task_deadline_s: float = 900.0,
        download_timeout_s: float | None = None,
        workspace_id: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        direct: AiohttpTransport | None = None,
        owns_client: bool = False,
    ) -> None:
        self._polls = PollSchedule(
            poll_interval_s, poll_max_interval_s, task_deadline_s, sleep=sleep, clock=clock
        )
        super().__init__(client=client, base_url=base_url, api_key=api_key, owns_client=owns_client)
        self._download_timeout_s = download_timeout_s
        self._workspace_id = workspace_id
        #: ``client``'s transport when calls may skip the client (nothing set on it that
        #: they need: no default headers, cookies, auth or hooks), with its timeouts.
        self._direct = None if direct is None else (direct, client.timeout)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: httpx.AsyncClient | None = None
    ) -> DashScopeProvider:
        """A provider for ``settings``' region; it owns (and closes) the client it creates."""
        owned = client is None
        direct: AiohttpTransport | None = None
        if client is None:
            # Keep every connection alive: with httpx's default of 20 kept-alive connections,
            # a shard with more requests in flight opens and closes connections constantly,
            # and httpcore's pool bookkeeping grows with every connection it holds.
            connections = max(8, 2 * (settings.max_in_flight or 16))
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            transport = (
                AiohttpTransport(limits=limits) if settings.http_transport == "aiohttp" else None
            )
            client = httpx.AsyncClient(
                timeout=settings_timeout(settings), limits=limits, transport=transport
            )
            direct = transport
        return cls(
            client=client,
            owns_client=owned,
            base_url=settings.base_url(),
            api_key=settings.api_key(),
            poll_interval_s=settings.poll_interval_s,
            poll_max_interval_s=settings.poll_max_interval_s,
            task_deadline_s=settings.task_deadline_s,
            download_timeout_s=settings.download_timeout_s,
            workspace_id=settings.dashscope_workspace_id,
            direct=direct,  # our own client: calls may skip it
        )

    def __repr__(self) -> str:
        workspace = f", workspace_id={self._workspace_id!r}" if self._workspace_id else ""
        return f"DashScopeProvider(base_url={self._base_url!r}, api_key=<hidden>{workspace})"

    # -- the Provider protocol ---------------------------------------------------------------

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        """One multimodal-generation call; ``images`` (edit inputs) go before the prompt."""
        content: list[dict[str, str]] = [{"image": image} for image in images]
        content.append({"text": request.prompt})
        parameters = _parameters(request)
        if request.negative_prompt:
            parameters["negative_prompt"] = request.negative_prompt
        body = {
            "model": request.model,
            "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": parameters,
        }
        data = await self._call("POST", GENERATION_PATH, body=body, billable=True)
        urls = [
            item["image"]
            for choice in _list(as_dict(data.get("output")).get("choices"))
            for item in _list(as_dict(as_dict(choice).get("message")).get("content"))
            if isinstance(item, dict) and isinstance(item.get("image"), str)
        ]
        width, height, count = _usage(data)
        return ProviderResult(
            images=tuple(ProviderImage(url=url, index=i) for i, url in enumerate(urls)),
            request_id=as_str(data.get("request_id")),
            billed_images=len(urls) if count is None else count,
            width=width,
            height=height,
        )

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        """Create a text2image task (``qwen-image``/``qwen-image-plus`` only); its task id.

        The task endpoint does not edit: ``images`` must be empty."""
        if images:
            raise ProviderError("DashScope's task endpoint does not edit", code="InvalidParameter")
        task_input = {"prompt": request.prompt}
        if request.negative_prompt:
            task_input["negative_prompt"] = request.negative_prompt
        body = {"model": request.model, "input": task_input, "parameters": _parameters(request)}
        data = await self._call("POST", SYNTHESIS_PATH, body=body, billable=True, async_task=True)
        task_id = as_str(as_dict(data.get("output")).get("task_id"))
        if not task_id:
            # The server answered but named no task: one may exist, and it may be billed.
            raise ProviderAmbiguousError(f"POST {SYNTHESIS_PATH}: 200 without a task_id")
        return task_id

    async def wait_task(self, task_id: str) -> ProviderResult:
        """Poll the task until it ends, sleeping ``poll_interval_s`` doubling to the max.

        A failed poll (429, 5xx, transport) is retried: polling is free. Past
        ``task_deadline_s`` this raises :class:`TaskDeadlineError`; the task is not cancelled.
        """
        path = f"{TASKS_PATH}/{quote(task_id, safe='')}"

        def outcome(data: dict[str, Any]) -> ProviderResult | str:
            status = as_str(as_dict(data.get("output")).get("task_status")) or "?"
            return self._task_result(task_id, status, data) if status in _FINAL_STATES else status

        poll = functools.partial(self._call, "GET", path, billable=False)
        return await self._polls.until_final(poll, outcome, task=task_id, handle=task_id)

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        """Tasks of ``model`` submitted between ``start`` and ``end`` (POSIX seconds).

        ``GET /tasks`` takes ``start_time``/``end_time`` as ``YYYYMMDDhhmmss`` in a time zone
        the docs do not name (⚠️), so the window sent is widened by 14 h each side and the
        rows are filtered here by their ``gmt_create`` (POSIX milliseconds) when they carry
        one. At most ``LIST_MAX_PAGES`` pages of ``LIST_PAGE_SIZE`` rows are read; a listing
        with more is returned marked incomplete.
        """
        skew = 14 * 3600.0
        params = {
            "model_name": model,
            "start_time": _list_time(start - skew),
            "end_time": _list_time(end + skew),
            "page_size": str(LIST_PAGE_SIZE),
        }
        found: list[TaskInfo] = []
        for page in range(1, LIST_MAX_PAGES + 1):
            query = urlencode({**params, "page_no": str(page)})
            data = await self._call("GET", f"{TASKS_PATH}?{query}", billable=False)
            rows = [as_dict(row) for row in _list(data.get("data"))]
            for row in rows:
                task_id = as_str(row.get("task_id"))
                if not task_id:
                    continue
                created = _int(row.get("gmt_create"))
                submitted = created / 1000 if created is not None else None
                if submitted is not None and not start <= submitted <= end:
                    continue
                status = as_str(row.get("task_status")) or as_str(row.get("status"))
                found.append(TaskInfo(task_id=task_id, status=status, submitted_at=submitted))
            if len(rows) < LIST_PAGE_SIZE:
                return TaskListing(found)
        return TaskListing(found, complete=False)

    async def download(self, url: str) -> bytes:
        """The bytes of a result URL; :class:`ResultExpiredError` once the signature expired."""
        response = await self._send(
            "GET",
            url,
            headers={"User-Agent": USER_AGENT},
            billable=False,
            timeout_s=self._download_timeout_s,
        )
        if response.is_success:
            return response.content
        expired = response.status_code in _EXPIRED_STATUSES or any(
            marker in response.text for marker in _EXPIRED_MARKERS
        )
        why = f"result URL expired or gone: {snippet(response.text)}"
        raise download_error(response, url, expired=why if expired else None)

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        billable: bool,
        body: dict[str, Any] | None = None,
        async_task: bool = False,
    ) -> dict[str, Any]:
        """One API call: its JSON object, or the classified error (also for errors in a 200)."""
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._workspace_id:
            headers["X-DashScope-WorkSpace"] = self._workspace_id
        if async_task:
            headers["X-DashScope-Async"] = "enable"
        url = self._base_url + path
        response = await self._send(method, url, headers=headers, billable=billable, body=body)
        what = f"{method} {path_of(url)}"
        data = json_object(response)
        if response.is_success and data is not None:
            # DashScope may report an error inside a 200: a ``code`` and no ``output`` (§4.1).
            if not ("code" in data and "output" not in data):
                return data
        elif response.is_success:
            raise unreadable_answer(what, response.status_code, billable=billable)
        data = data or {}
        message = as_str(data.get("message")) or as_str(data.get("msg"))
        raise classify_error(
            response.status_code,
            as_str(data.get("code")),
            self._redact(message or snippet(response.text)),
            request_id=as_str(data.get("request_id")),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            context=what,
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        billable: bool,
        body: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send, translating httpx's exceptions: a message of our own, never httpx's text.

        ``billable`` marks a POST that creates images: once its body may have left, a lost
        answer is ambiguous rather than transient. ``timeout_s`` overrides the client's.
        """
        what = f"{method} {path_of(url)}"  # never the query: a result URL's signature
        try:
            if self._direct is not None:
                transport, timeout = self._direct
                if body is not None:
                    headers = {**headers, "Content-Type": "application/json"}
                return await transport.fetch(
                    method,
                    url,
                    headers={**headers, "Accept-Encoding": "gzip, deflate"},
                    content=None if body is None else _json_bytes(body),
                    timeouts=httpx.Timeout(timeout_s) if timeout_s else timeout,
                )
            return await self._client.send(self._request(method, url, headers, body, timeout_s))
        except BEFORE_SEND as exc:
            name = type(exc).__name__
            error = ProviderTransientError(f"{what}: {name} before the request was sent", code=name)
            # Refused, DNS, TLS, connect timeout: the endpoint, not this request.
            error.account_wide = not isinstance(exc, httpx.PoolTimeout)
            raise error from exc
        except httpx.UnsupportedProtocol as exc:
            raise ProviderError(
                f"{what}: unsupported URL scheme", code="UnsupportedProtocol"
            ) from exc
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            if billable:
                raise ProviderAmbiguousError(
                    f"{what}: {name} after the request was sent; it may have been billed",
                    code=name,
                ) from exc
            raise ProviderTransientError(f"{what}: {name}", code=name) from exc

    def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> httpx.Request:
        """The request for httpx's client (any client given to the provider)."""
        try:
            request = self._client.build_request(
                method, url, headers=headers, json=body, timeout=timeout_s or USE_CLIENT_DEFAULT
            )
        except httpx.InvalidURL as exc:
            raise ProviderError(f"{method}: not a valid URL", code="InvalidURL") from exc
        if "Authorization" not in headers:
            # Another host (a signed OSS URL): never hand it our key, even via client defaults.
            request.headers.pop("Authorization", None)
        return request

    def _task_result(self, task_id: str, status: str, data: dict[str, Any]) -> ProviderResult:
        """The result of a task in a final state, or its error."""
        output = as_dict(data.get("output"))
        request_id = as_str(data.get("request_id"))
        if status == "SUCCEEDED":
            urls: list[str] = []
            item_errors: list[tuple[str, str]] = []
            actual_prompt: str | None = None
            orig_prompt: str | None = None
            for item in map(as_dict, _list(output.get("results"))):
                url = as_str(item.get("url"))
                if url:
                    urls.append(url)
                    actual_prompt = actual_prompt or as_str(item.get("actual_prompt"))
                    orig_prompt = orig_prompt or as_str(item.get("orig_prompt"))
                else:
                    message = self._redact(
                        as_str(item.get("message")) or as_str(item.get("msg")) or ""
                    )
                    item_errors.append((as_str(item.get("code")) or "ItemFailed", message))
            width, height, count = _usage(data)
            return ProviderResult(
                images=tuple(ProviderImage(url=url, index=i) for i, url in enumerate(urls)),
                request_id=request_id,
                task_id=task_id,
                billed_images=len(urls) if count is None else count,
                width=width,
                height=height,
                actual_prompt=actual_prompt,
                orig_prompt=orig_prompt,
                item_errors=tuple(item_errors),
            )
        context = f"task {task_id} {status}"
        if status == "FAILED":
            reason = self._redact(as_str(output.get("message")) or as_str(output.get("msg")) or "")
            code = as_str(output.get("code")) or "TaskFailed"
            raise classify_error(None, code, reason, request_id=request_id, context=context)
        if status == "UNKNOWN":
            raise ResultExpiredError(
                f"{context}: the task id is invalid or past its 24 h life",
                code="TaskUnknown",
                request_id=request_id,
            )
        if status == "CANCELED":
            raise ProviderError(
                f"{context}: the task was cancelled", code="TaskCanceled", request_id=request_id
            )
        raise ProviderError(
            f"{context}: unexpected task status", code="TaskStatus", request_id=request_id
        )


def _parameters(request: RenderRequest) -> dict[str, Any]:
    """The ``parameters`` both endpoints share; ``watermark`` is always explicit (§3.4)."""
    parameters: dict[str, Any] = {}
    if request.size is not None:
        parsed = parse_size(request.size)
        if parsed is None:
            raise ProviderError(f"size {request.size!r} is not W*H", code="InvalidParameter")
        parameters["size"] = f"{parsed[0]}*{parsed[1]}"
    parameters["n"] = request.n
    parameters["seed"] = request.seed
    if request.prompt_extend is not None:
        parameters["prompt_extend"] = request.prompt_extend
    parameters["watermark"] = request.watermark
    return parameters


def _list_time(posix: float) -> str:
    """``YYYYMMDDhhmmss`` in UTC, the task listing's time format."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(max(posix, 0.0)))


def _usage(data: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(width, height, image_count) from ``usage``, in either spelling (§4.1)."""
    usage = as_dict(data.get("usage"))

    def pick(*keys: str) -> int | None:
        values = (_int(usage.get(key)) for key in keys)
        return next((value for value in values if value is not None), None)

    return (
        pick("width", "output_width"),
        pick("height", "output_height"),
        pick("image_count", "output_image_count"),
    )


def _json_bytes(body: dict[str, Any]) -> bytes:
    """A JSON body as httpx encodes ``json=``: compact, UTF-8, no NaN."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


if TYPE_CHECKING:
    # mypy checks here that the class satisfies the protocol the engine calls.
    _conforms: type[Provider] = DashScopeProvider
