"""DashScope's error answers, classified by one table: retry, slow down, or record and move on.

The table follows ``docs/providers/dashscope.md`` §5; the first row that matches decides.
What each kind means to the engine:

=============  =======================  ==========================================================
kind           error                    what the engine does
=============  =======================  ==========================================================
``throttled``  :class:`ThrottledError`  cut the limiter's rate, honour ``Retry-After``, retry
``transient``  ProviderTransientError   retry with exponential backoff and full jitter
``moderated``  :class:`ModerationError` record status ``moderated`` with code and message
``permanent``  :class:`ProviderError`   record status ``failed`` with code and message
=============  =======================  ==========================================================

A ``permanent`` answer that refuses the account rather than the request (401, 403,
Arrearage, a quota used up) is marked ``account_wide``: the engine leaves such rows
unrendered and its circuit breaker stops calling (``qwbatch.render.breaker``).

Transport failures are classified where they happen (``DashScopeProvider._send``): before
the request was sent they are transient; after a billable request was sent, ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from qwbatch.core.errors import (
    ModerationError,
    ProviderError,
    ProviderTransientError,
    ThrottledError,
)

Kind = Literal["throttled", "transient", "moderated", "permanent"]


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row: answers whose code starts with one of ``codes``, whose message contains one
    of ``messages`` (case-insensitive), or whose HTTP status is in ``statuses`` or at least
    ``status_from`` are of ``kind``. A row sets exactly one of these criteria."""

    kind: Kind
    why: str
    codes: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    statuses: tuple[int, ...] = ()
    status_from: int | None = None

    def matches(self, status_code: int | None, code: str, message: str) -> bool:
        if self.codes:
            return code.startswith(self.codes)
        if self.messages:
            text = message.lower()
            return any(fragment in text for fragment in self.messages)
        if status_code is None:
            return False
        return status_code in self.statuses or (
            self.status_from is not None and status_code >= self.status_from
        )


#: The classification table, first match wins; an answer no row matches is permanent.
ERROR_TABLE: Final[tuple[ErrorRule, ...]] = (
    ErrorRule(
        "moderated", "content moderation blocked the input or output", ("DataInspectionFailed",)
    ),
    ErrorRule(
        "throttled",
        "429 Throttling, Throttling.RateQuota (rate), Throttling.AllocationQuota (quota window)",
        ("Throttling",),
    ),
    ErrorRule(
        "throttled",
        "burst protection: 'Request rate increased too quickly'",
        messages=("rate increased too quickly",),
    ),
    ErrorRule("transient", "server error: InternalError, InternalError.Algo", ("InternalError",)),
    ErrorRule("transient", "server-side timeout", ("RequestTimeOut",)),
    ErrorRule(
        "permanent",
        "bad request, auth, arrears, no access, quota used up: the same answer every time",
        (
            "InvalidParameter",
            "BadRequest",
            "InvalidURL",
            "Arrearage",
            "InvalidApiKey",
            "AccessDenied",
            "Model.AccessDenied",
            "AllocationQuota",
        ),
    ),
    ErrorRule(
        "permanent",
        "free quota exhausted, whatever the code",
        messages=("quota exhausted",),
    ),
    ErrorRule("throttled", "an unknown code on 429", statuses=(429,)),
    ErrorRule(
        "transient", "an unknown code on 408 or 5xx (gateways)", statuses=(408,), status_from=500
    ),
)


def error_kind(status_code: int | None, code: str | None, message: str | None) -> Kind:
    """The kind of an answer: the first :data:`ERROR_TABLE` row it matches, else permanent."""
    for rule in ERROR_TABLE:
        if rule.matches(status_code, code or "", message or ""):
            return rule.kind
    return "permanent"


def classify_error(
    status_code: int | None,
    code: str | None,
    message: str | None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    context: str = "DashScope",
) -> ProviderTransientError | ProviderError:
    """The error for a provider answer, of the class its :func:`error_kind` names.

    ``status_code`` is None for failures reported inside a body (a FAILED task).
    ``retry_after`` (seconds) rides on retryable errors.
    """
    code = code or None
    status = f"HTTP {status_code} " if status_code is not None else ""
    text = f"{context}: {status}{code or ''}".rstrip() + (f": {message}" if message else "")
    fallback = code or (f"HTTP{status_code}" if status_code is not None else None)
    kind = error_kind(status_code, code, message)
    error = _error_of_kind(kind, text, fallback, status_code, request_id, retry_after)
    error.account_wide = kind == "permanent" and _account_wide(status_code, code, message)
    return error


#: Codes that refuse the account, not the request: every call would get the same answer.
ACCOUNT_CODES: Final = ("InvalidApiKey", "Arrearage", "AllocationQuota", "insufficient_quota")


def _account_wide(status_code: int | None, code: str | None, message: str | None) -> bool:
    """A wrong or missing key (401), no access (403), arrears or quota used up."""
    return (
        status_code in (401, 403)
        or (code or "").startswith(ACCOUNT_CODES)
        or "quota exhausted" in (message or "").lower()
    )


def _error_of_kind(
    kind: Kind,
    text: str,
    fallback: str | None,
    status_code: int | None,
    request_id: str | None,
    retry_after: float | None,
) -> ProviderTransientError | ProviderError:
    if kind in ("throttled", "transient"):
        cls = ThrottledError if kind == "throttled" else ProviderTransientError
        return cls(
            text,
            code=fallback,
            status_code=status_code,
            request_id=request_id,
            retry_after=retry_after,
        )
    permanent = ModerationError if kind == "moderated" else ProviderError
    return permanent(text, code=fallback, status_code=status_code, request_id=request_id)
