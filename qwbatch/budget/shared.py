"""A run's budget counted on the Prefect server, so every worker of the run shares it.

The counter is a Prefect global concurrency limit with no slot decay, one per run
(``qwbatch-budget-<run id>``): its ``limit`` is the run's remaining budget and its active
slots are the money held or spent, in units of :data:`COUNTER_UNIT`. Reserving is the
server's ``/v2/concurrency_limits/increment``, which adds slots only if they still fit under
the limit, in one conditional UPDATE (423 Locked otherwise), so two workers can never both
take the last of the budget. Settling frees what the call did not spend
(``/v2/concurrency_limits/decrement``); what it spent stays occupied until the run ends and
the flow deletes the counter. Slots are taken without a lease, so the server never frees
them on its own: a crashed worker's holds stay counted as spent, the safe side. A flow killed
before its end leaves its counter on the server (``prefect gcl ls``); a rerun under the same
run id recreates it from the catalog's record of that run's spend.

Rounding is always towards less budget: the limit is rounded down to a unit, reservations
and spend up, so a price finer than 0.0001 can stop a run a few units early, never late.
The counter's limit column is a 32-bit integer on PostgreSQL: 214,748 in the run's currency.

Failing closed: when the server cannot be reached, or the counter does not exist, a
reservation raises :class:`~qwbatch.core.errors.BudgetExceededError` (the request is recorded as
``skipped_budget`` with the reason) instead of spending unguarded. A release that fails
leaves the money counted as spent, and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from qwbatch.budget.hold import Hold
from qwbatch.core.errors import BudgetExceededError, ConfigError

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

_log = logging.getLogger(__name__)

#: One slot of the counter, in the run's currency.
COUNTER_UNIT = Decimal("0.0001")
#: The largest limit a PostgreSQL-backed server stores (a 32-bit integer column).
MAX_UNITS = 2**31 - 1


def to_units(amount: Decimal, *, down: bool = False) -> int:
    """``amount`` in counter units, rounded up (or ``down``) to a whole unit."""
    return int((amount / COUNTER_UNIT).to_integral_value(ROUND_FLOOR if down else ROUND_CEILING))


def server_configured() -> bool:
    """Whether Prefect talks to a server other workers can reach (PREFECT_API_URL is set)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


async def create_counter(name: str, limit: Decimal) -> None:
    """Create (or recreate, empty) the counter ``name`` holding ``limit``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    units = to_units(limit, down=True)
    if units > MAX_UNITS:
        raise ConfigError(
            f"a budget of {limit} is more than the Prefect budget counter holds "
            f"({MAX_UNITS * COUNTER_UNIT}); use QWBATCH_BUDGET_BACKEND=local"
        )
    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(name)
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=units, slot_decay_per_second=0.0)
        )


async def read_counter(name: str) -> Decimal:
    """Money the counter holds now: spent, possibly spent, and reserved."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots * COUNTER_UNIT


async def delete_counter(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(name)


class PrefectBudget:
    """A :class:`~qwbatch.budget.hold.BudgetGuard` on the Prefect server's counter ``name``.

    Use as an async context manager: it opens one Prefect client for the shard.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._client: PrefectClient | None = None

    async def __aenter__(self) -> PrefectBudget:
        from prefect.client.orchestration import get_client

        self._client = get_client()
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
            self._client = None

    @property
    def client(self) -> PrefectClient:
        if self._client is None:
            raise RuntimeError("use PrefectBudget as an async context manager")
        return self._client

    async def reserve(self, amount: Decimal) -> Hold | None:
        units = to_units(amount)
        if units == 0:
            return Hold(amount, 0)
        try:
            response = await self.client.increment_concurrency_slots(
                names=[self.name], slots=units, mode="concurrency"
            )
        except httpx.HTTPStatusError as exc:
            # 423: it does not fit beside what is held; 422: it is more than the whole limit.
            if exc.response.status_code in (422, 423):
                return None
            raise BudgetExceededError(
                f"budget counter {self.name} answered HTTP {exc.response.status_code}; "
                "refusing to spend unguarded"
            ) from exc
        except httpx.HTTPError as exc:
            raise BudgetExceededError(
                f"budget counter {self.name} is unreachable ({type(exc).__name__}); "
                "refusing to spend unguarded"
            ) from exc
        if not any(limit.get("name") == self.name for limit in response.json()):
            raise BudgetExceededError(
                f"budget counter {self.name} does not exist on the Prefect server; "
                "refusing to spend unguarded"
            )
        return Hold(amount, units)

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        free = hold.units - to_units(spent)
        try:
            if free > 0:
                await self.client.release_concurrency_slots(
                    names=[self.name],
                    slots=free,
                    occupancy_seconds=max(time.monotonic() - hold.taken_at, 0.001),
                )
            elif free < 0:
                # The provider billed more than the call could (usage above n): count it.
                await self.client.increment_concurrency_slots(
                    names=[self.name], slots=-free, mode="concurrency"
                )
        except httpx.HTTPError as exc:
            _log.warning(
                "budget counter %s: could not settle a call (%s); %s stays counted as spent",
                self.name,
                type(exc).__name__,
                hold.amount,
            )
