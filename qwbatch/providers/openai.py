"""The OpenAI Images client (GPT Image), and gateways that copy its path in another shape.

Synchronous (``docs/providers/openai.md``): ``POST {base}/images/generations`` (JSON) or
``POST {base}/images/edits`` (multipart, up to 16 ``image[]`` parts, each with its image
content type). Images come back inline as base64: each becomes a ``data:`` URL that
:meth:`OpenAIProvider.download` decodes, so the journal holds the answer and a crash after
it harvests instead of paying again. The bill is ``usage`` tokens × the model table's token
prices (:func:`qwbatch.core.costs.token_cost`).

Errors: 429 ``rate_limit_exceeded`` (and ``slow_down``) is throttling, waited out;
429 ``insufficient_quota`` stops every later call of this client
(:class:`~qwbatch.core.errors.QuotaExhaustedError`); ``moderation_blocked`` is moderation;
a timeout or a dropped connection after the POST is ambiguous (no idempotency key exists).

The ``together`` dialect (Together AI and the like) sends ``width``/``height`` and
``response_format: base64`` and reads no usage: the table's per-image price is the bill.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx

from qwbatch.core.costs import as_float, token_cost
from qwbatch.core.errors import ModerationError, ProviderError, QuotaExhaustedError
from qwbatch.core.model_table import ModelTable, parse_size
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderImage, ProviderResult, RenderRequest
from qwbatch.providers.base import TaskListing
from qwbatch.providers.http_calls import (
    as_dict,
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

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider

Dialect = Literal["openai", "together"]
#: Content types an edit part may carry (``application/octet-stream`` is refused).
_IMAGE_TYPES: Final = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
}
_THROTTLE_CODES: Final = frozenset({"rate_limit_exceeded", "slow_down"})


class OpenAIProvider(HttpProvider):
    """The :class:`~qwbatch.providers.base.Provider` for the OpenAI Images API."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        table: ModelTable,
        dialect: Dialect = "openai",
        owns_client: bool = False,
    ) -> None:
        super().__init__(client=client, base_url=base_url, api_key=api_key, owns_client=owns_client)
        self._table = table
        self._dialect = dialect
        #: Set once the account's quota is gone: nothing more is sent.
        self._quota_gone: QuotaExhaustedError | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, table: ModelTable, client: httpx.AsyncClient | None = None
    ) -> OpenAIProvider:
        """A provider for ``settings``; it owns (and closes) the client it creates."""
        return cls(
            client=client or httpx.AsyncClient(timeout=settings_timeout(settings)),
            owns_client=client is None,
            base_url=settings.openai_base_url,
            api_key=settings.openai_key(),
            table=table,
            dialect=settings.openai_dialect,
        )

    def __repr__(self) -> str:
        where = f"base_url={self._base_url!r}, dialect={self._dialect!r}"
        return f"OpenAIProvider({where}, api_key=<hidden>)"

    # -- the Provider protocol ---------------------------------------------------------------

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        """One generation, or an edit of ``images`` (``data:`` URIs or https URLs)."""
        fields = self._fields(request)
        if images:
            url = f"{self._base_url}/images/edits"
            parts = [("image[]", _part(index, image)) for index, image in enumerate(images)]
            form = {key: str(value) for key, value in fields.items()}
            data = await self._call(url, data=form, files=parts)
        else:
            data = await self._call(f"{self._base_url}/images/generations", json=fields)
        return self._result(request, data)

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        raise ProviderError("the Images API is synchronous: no tasks", code="NoTasks")

    async def wait_task(self, task_id: str) -> ProviderResult:
        raise ProviderError("the Images API is synchronous: no tasks", code="NoTasks")

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        del model, start, end
        return TaskListing([], complete=False)

    async def download(self, url: str) -> bytes:
        """An inline image's bytes (``data:…;base64,``), or an https result (gateways)."""
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (binascii.Error, IndexError) as exc:
                raise ProviderError("an inline image is not valid base64", code="BadImage") from exc
        response = await send(self._client, "GET", url, headers={}, billable=False)
        if response.is_success:
            return response.content
        raise download_error(response, url)

    # -- plumbing ----------------------------------------------------------------------------

    def _fields(self, request: RenderRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "n": request.n}
        size = parse_size(request.size) if request.size else None
        if self._dialect == "together":
            if size is not None:
                fields["width"], fields["height"] = size
            fields["seed"] = request.seed
            fields["response_format"] = "base64"
            if request.negative_prompt:
                fields["negative_prompt"] = request.negative_prompt
        elif size is not None:
            fields["size"] = f"{size[0]}x{size[1]}"
        fields.update(request.params_dict())
        return fields

    def _result(self, request: RenderRequest, data: dict[str, Any]) -> ProviderResult:
        items = [as_dict(item) for item in data.get("data") or [] if isinstance(item, dict)]
        fmt = as_str(data.get("output_format")) or "png"
        images = []
        for index, item in enumerate(items):
            inline = as_str(item.get("b64_json"))
            url = as_str(item.get("url"))
            if inline:
                images.append(ProviderImage(url=f"data:image/{fmt};base64,{inline}", index=index))
            elif url:
                images.append(ProviderImage(url=url, index=index))
        usage = as_dict(data.get("usage"))
        cost: float | None = None
        if usage:
            details = as_dict(usage.get("input_tokens_details"))
            text_in = _int(details.get("text_tokens"))
            image_in = _int(details.get("image_tokens"))
            if not details:
                text_in = _int(usage.get("input_tokens"))
            cost = as_float(
                token_cost(
                    self._table.get(request.model),
                    text_in=text_in,
                    image_in=image_in,
                    image_out=_int(usage.get("output_tokens")),
                )
            )
        return ProviderResult(
            images=tuple(images),
            request_id=as_str(data.get("id")),
            billed_images=len(images),
            cost=cost,
        )

    async def _call(
        self,
        url: str,
        *,
        json: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> dict[str, Any]:
        if self._quota_gone is not None:
            raise self._quota_gone
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        response = await send(
            self._client,
            "POST",
            url,
            headers=headers,
            billable=True,
            json=json,
            data=data,
            files=files,
        )
        what = f"POST {path_of(url)}"
        body = json_object(response)
        if response.is_success and body is not None:
            return body
        if response.is_success:
            raise unreadable_answer(what, response.status_code, billable=True)
        raise self._error(response, body or {}, what)

    def _error(self, response: httpx.Response, body: dict[str, Any], what: str) -> Exception:
        error = as_dict(body.get("error"))
        status = response.status_code
        code = as_str(error.get("code")) or as_str(error.get("type")) or f"HTTP{status}"
        message = self._redact(as_str(error.get("message")) or snippet(response.text))
        text = f"{what}: HTTP {status} {code}: {message}"
        request_id = response.headers.get("x-request-id")
        if code == "insufficient_quota":
            self._quota_gone = QuotaExhaustedError(
                text, code=code, status_code=status, request_id=request_id
            )
            return self._quota_gone
        if code == "moderation_blocked":
            return ModerationError(text, code=code, status_code=status, request_id=request_id)
        throttled = status == 429 or code in _THROTTLE_CODES
        return status_error(
            status,
            text,
            code=code,
            request_id=request_id,
            retry_after=_retry_after(response.headers) if throttled else None,
            throttled=throttled,
        )


def _part(index: int, image: str) -> tuple[str, bytes, str]:
    """One ``image[]`` part from a ``data:`` URI: its bytes and image content type."""
    if not image.startswith("data:") or "," not in image:
        raise ProviderError(
            "edit inputs go to OpenAI as file parts: a data: URI is needed", code="InputForm"
        )
    header, payload = image.split(",", 1)
    subtype = header.removeprefix("data:").split(";", 1)[0].removeprefix("image/")
    content_type = _IMAGE_TYPES.get(subtype, "image/png")
    extension = "jpg" if content_type == "image/jpeg" else content_type.split("/")[1]
    return f"input-{index + 1}.{extension}", base64.b64decode(payload), content_type


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after`` or else OpenAI's ``retry-after-ms``."""
    seconds = parse_retry_after(headers.get("retry-after"))
    millis = headers.get("retry-after-ms")
    if seconds is None and millis and millis.replace(".", "", 1).isdigit():
        return float(millis) / 1000
    return seconds


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


if TYPE_CHECKING:
    _conforms: type[Provider] = OpenAIProvider
