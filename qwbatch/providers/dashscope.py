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
import email.utils
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode, urlsplit

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
from qwbatch.core.version import __version__
from qwbatch.providers.aiohttp_transport import AiohttpTransport
from qwbatch.providers.base import TaskInfo, TaskListing
from qwbatch.providers.dashscope_errors import classify_error

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider

__all__ = ["DashScopeProvider", "TaskDeadlineError", "classify_error", "parse_retry_after"]

_log = logging.getLogger(__name__)

GENERATION_PATH: Final = "/services/aigc/multimodal-generation/generation"
SYNTHESIS_PATH: Final = "/services/aigc/text2image/image-synthesis"
TASKS_PATH: Final = "/tasks"
#: Task listing: rows per page, and pages read at most (recovery needs recent tasks only).
LIST_PAGE_SIZE: Final = 100
LIST_MAX_PAGES: Final = 20

#: Failures raised before a single byte of the request left: always safe to retry.
_BEFORE_SEND: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Task states that end polling; anything else (PENDING, RUNNING, SUSPENDED…) is polled again.
_FINAL_STATES: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
_EXPIRED_STATUSES: Final = frozenset({403, 404, 410})
_EXPIRED_MARKERS: Final = ("Request has expired", "<Code>AccessDenied</Code>")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now; None if unusable."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class DashScopeProvider:
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
    ) -> None:
        if not 0 < poll_interval_s <= poll_max_interval_s or task_deadline_s <= 0:
            raise ValueError("need 0 < poll_interval_s <= poll_max_interval_s and a deadline > 0")
        self._client = client
        self._owns_client = False
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._poll_interval_s = poll_interval_s
        self._poll_max_interval_s = poll_max_interval_s
        self._task_deadline_s = task_deadline_s
        self._download_timeout_s = download_timeout_s
        self._workspace_id = workspace_id
        self._sleep = sleep
        self._clock = clock
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
            timeout = httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=60.0,
                # Waiting for a free connection sends nothing; a PoolTimeout is retried.
                pool=30.0,
            )
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
            client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
            direct = transport
        provider = cls(
            client=client,
            base_url=settings.base_url(),
            api_key=settings.api_key(),
            poll_interval_s=settings.poll_interval_s,
            poll_max_interval_s=settings.poll_max_interval_s,
            task_deadline_s=settings.task_deadline_s,
            download_timeout_s=settings.download_timeout_s,
            workspace_id=settings.dashscope_workspace_id,
            direct=direct,  # our own client: calls may skip it
        )
        provider._owns_client = owned
        return provider

    def __repr__(self) -> str:
        workspace = f", workspace_id={self._workspace_id!r}" if self._workspace_id else ""
        return f"DashScopeProvider(base_url={self._base_url!r}, api_key=<hidden>{workspace})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> DashScopeProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
            for choice in _list(_dict(data.get("output")).get("choices"))
            for item in _list(_dict(_dict(choice).get("message")).get("content"))
            if isinstance(item, dict) and isinstance(item.get("image"), str)
        ]
        width, height, count = _usage(data)
        return ProviderResult(
            images=tuple(ProviderImage(url=url, index=i) for i, url in enumerate(urls)),
            request_id=_str(data.get("request_id")),
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
        task_id = _str(_dict(data.get("output")).get("task_id"))
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
        deadline = self._clock() + self._task_deadline_s
        interval = self._poll_interval_s
        while True:
            try:
                data = await self._call("GET", path, billable=False)
            except ProviderTransientError as exc:
                delay = max(interval, exc.retry_after or 0.0)
                last = exc.message
                _log.info("poll of task %s failed (%s); polling again", task_id, exc.code)
            else:
                output = _dict(data.get("output"))
                status = _str(output.get("task_status")) or "?"
                if status in _FINAL_STATES:
                    return self._task_result(task_id, status, data)
                delay, last = interval, f"status {status}"
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TaskDeadlineError(
                    f"task {task_id} had not ended after {self._task_deadline_s:g} s ({last}); "
                    "it was not cancelled, poll it again later",
                    task_id=task_id,
                )
            await self._sleep(min(delay, remaining))
            interval = min(interval * 2, self._poll_max_interval_s)

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
            rows = [_dict(row) for row in _list(data.get("data"))]
            for row in rows:
                task_id = _str(row.get("task_id"))
                if not task_id:
                    continue
                created = _int(row.get("gmt_create"))
                submitted = created / 1000 if created is not None else None
                if submitted is not None and not start <= submitted <= end:
                    continue
                status = _str(row.get("task_status")) or _str(row.get("status"))
                found.append(TaskInfo(task_id=task_id, status=status, submitted_at=submitted))
            if len(rows) < LIST_PAGE_SIZE:
                return TaskListing(found)
        return TaskListing(found, complete=False)

    async def download(self, url: str) -> bytes:
        """The bytes of a result URL; :class:`ResultExpiredError` once the signature expired."""
        response = await self._send(
            "GET",
            url,
            headers={"User-Agent": f"qwbatch/{__version__}"},
            billable=False,
            timeout_s=self._download_timeout_s,
        )
        what = f"GET {_path(url)}"  # the query is the signature: keep it out
        if response.is_success:
            return response.content
        snippet = _snippet(response.text)
        if response.status_code in _EXPIRED_STATUSES or any(
            marker in response.text for marker in _EXPIRED_MARKERS
        ):
            raise ResultExpiredError(
                f"{what}: HTTP {response.status_code}: result URL expired or gone: {snippet}",
                code="ResultExpired",
                status_code=response.status_code,
            )
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise ProviderTransientError(
                f"{what}: HTTP {response.status_code}: {snippet}",
                code=f"HTTP{response.status_code}",
                status_code=response.status_code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        raise ProviderError(
            f"{what}: HTTP {response.status_code}: {snippet}",
            code=f"HTTP{response.status_code}",
            status_code=response.status_code,
        )

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
            "User-Agent": f"qwbatch/{__version__}",
        }
        if self._workspace_id:
            headers["X-DashScope-WorkSpace"] = self._workspace_id
        if async_task:
            headers["X-DashScope-Async"] = "enable"
        url = self._base_url + path
        response = await self._send(method, url, headers=headers, billable=billable, body=body)
        what = f"{method} {_path(url)}"
        data = _json_object(response)
        if response.is_success and data is not None:
            # DashScope may report an error inside a 200: a ``code`` and no ``output`` (§4.1).
            if not ("code" in data and "output" not in data):
                return data
        elif response.is_success:
            # An answer we cannot read: a billed POST may have made images, a poll can be redone.
            problem = f"{what}: HTTP {response.status_code} without a JSON object"
            if billable:
                raise ProviderAmbiguousError(problem)
            raise ProviderTransientError(problem, status_code=response.status_code)
        data = data or {}
        message = _str(data.get("message")) or _str(data.get("msg"))
        raise classify_error(
            response.status_code,
            _str(data.get("code")),
            self._redact(message or _snippet(response.text)),
            request_id=_str(data.get("request_id")),
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
        what = f"{method} {_path(url)}"  # never the query: a result URL's signature
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
        except _BEFORE_SEND as exc:
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
        output = _dict(data.get("output"))
        request_id = _str(data.get("request_id"))
        if status == "SUCCEEDED":
            urls: list[str] = []
            item_errors: list[tuple[str, str]] = []
            actual_prompt: str | None = None
            orig_prompt: str | None = None
            for item in map(_dict, _list(output.get("results"))):
                url = _str(item.get("url"))
                if url:
                    urls.append(url)
                    actual_prompt = actual_prompt or _str(item.get("actual_prompt"))
                    orig_prompt = orig_prompt or _str(item.get("orig_prompt"))
                else:
                    message = self._redact(_str(item.get("message")) or _str(item.get("msg")) or "")
                    item_errors.append((_str(item.get("code")) or "ItemFailed", message))
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
            reason = self._redact(_str(output.get("message")) or _str(output.get("msg")) or "")
            code = _str(output.get("code")) or "TaskFailed"
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

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<hidden>") if self._api_key else text


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
    usage = _dict(data.get("usage"))

    def pick(*keys: str) -> int | None:
        values = (_int(usage.get(key)) for key in keys)
        return next((value for value in values if value is not None), None)

    return (
        pick("width", "output_width"),
        pick("height", "output_height"),
        pick("image_count", "output_image_count"),
    )


def _path(url: str) -> str:
    """The path of ``url`` for messages: never its query (a result URL's signature)."""
    try:
        return urlsplit(url).path
    except ValueError:  # a malformed host; sending it fails with a message of its own
        return "(not a valid URL)"


def _json_bytes(body: dict[str, Any]) -> bytes:
    """A JSON body as httpx encodes ``json=``: compact, UTF-8, no NaN."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return None
    return _dict(data) if isinstance(data, dict) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _snippet(text: str, limit: int = 200) -> str:
    """A short, one-line excerpt of a non-JSON body (an HTML error page, an OSS XML error)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


if TYPE_CHECKING:
    # mypy checks here that the class satisfies the protocol the engine calls.
    _conforms: type[Provider] = DashScopeProvider
