"""The provider registry: one :class:`~qwbatch.providers.base.Provider` that routes each call
to the client of the model's provider (the model table's ``provider`` column).

The engine and the budget see one provider, as before; a run with Qwen, FLUX and GPT Image
rows gets all three behind it. The DashScope client is built at once (as runs always did);
the BFL and OpenAI clients on their first call, so a run without those rows needs no key
for them. A row of a provider whose key is missing, or priced in USD in a run whose
currency is not USD, fails with a :class:`~qwbatch.core.errors.ConfigError` saying so
(recorded on that row; the others go on).

Task handles route by shape: a BFL handle is ``id|credits|polling_url`` (see
:mod:`qwbatch.providers.bfl`), a DashScope task id has no ``|``. Downloads route by what
this router returned: inline ``data:`` images are OpenAI's, sample URLs it saw BFL return
are BFL's, anything else (a DashScope result URL, or one journaled before a crash) goes to
the DashScope client, whose download serves any signed URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from qwbatch.core.errors import ConfigError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderResult, RenderRequest
from qwbatch.providers.base import TaskListing
from qwbatch.providers.bfl import BflProvider
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider


class ProviderRouter:
    """Routes each call to the client of its model's provider (see the module doc)."""

    def __init__(
        self,
        *,
        settings: Settings,
        table: ModelTable,
        dashscope: DashScopeProvider,
        bfl: BflProvider | None = None,
        openai: OpenAIProvider | None = None,
    ) -> None:
        self._settings = settings
        self._table = table
        self._dashscope = dashscope
        self._bfl = bfl
        self._openai = openai
        #: Clients this router made (and closes).
        self._owned: list[BflProvider | OpenAIProvider] = []
        self._bfl_samples: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, table: ModelTable) -> ProviderRouter:
        return cls(
            settings=settings, table=table, dashscope=DashScopeProvider.from_settings(settings)
        )

    async def __aenter__(self) -> ProviderRouter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._owned:
            await client.aclose()
        await self._dashscope.aclose()

    # -- routing -----------------------------------------------------------------------------

    def _for_model(self, model: str) -> DashScopeProvider | BflProvider | OpenAIProvider:
        provider = self._table.get(model).provider
        if provider == "dashscope":
            return self._dashscope
        if self._settings.currency() != "USD":
            raise ConfigError(
                f"{model} is billed in USD, but this run counts {self._settings.currency()} "
                f"(region {self._settings.region}); run it in region singapore or virginia"
            )
        if provider == "bfl":
            return self._bfl_client()
        return self._openai_client()

    def _bfl_client(self) -> BflProvider:
        if self._bfl is None:
            if not self._settings.bfl_key():
                raise ConfigError("BFL_API_KEY is not set: FLUX rows cannot be sent")
            self._bfl = BflProvider.from_settings(self._settings, self._table)
            self._owned.append(self._bfl)
        return self._bfl

    def _openai_client(self) -> OpenAIProvider:
        if self._openai is None:
            if not self._settings.openai_key():
                raise ConfigError("OPENAI_API_KEY is not set: GPT Image rows cannot be sent")
            self._openai = OpenAIProvider.from_settings(self._settings, self._table)
            self._owned.append(self._openai)
        return self._openai

    # -- the Provider protocol ---------------------------------------------------------------

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        client = self._for_model(request.model)
        result = await client.generate(request, images)
        return self._seen(result) if isinstance(client, BflProvider) else result

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        client = self._for_model(request.model)
        return await (
            client.submit_task(request, images) if images else client.submit_task(request)
        )

    async def wait_task(self, task_id: str) -> ProviderResult:
        if "|" in task_id:
            return self._seen(await self._bfl_client().wait_task(task_id))
        return await self._dashscope.wait_task(task_id)

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        return await self._for_model(model).list_tasks(model, start, end)

    async def download(self, url: str) -> bytes:
        if url.startswith("data:"):
            return await self._openai_client().download(url)
        if url in self._bfl_samples:
            return await self._bfl_client().download(url)
        return await self._dashscope.download(url)

    def _seen(self, result: ProviderResult) -> ProviderResult:
        """Remember a BFL result's sample URLs, so their download goes to BFL's client."""
        self._bfl_samples.update(image.url for image in result.images)
        return result


if TYPE_CHECKING:
    _conforms: type[Provider] = ProviderRouter
