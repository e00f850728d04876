"""One error tree for qwbatch, split by what the caller should do.

::

    QwBatchError
    ├── TransientError              retry with backoff; the same call may succeed later
    │   ├── ProviderTransientError  429 Throttling*, 5xx, transport errors before the request landed
    │   │   ├── ThrottledError      429 Throttling*: also slows the limiter down
    │   │   └── TaskDeadlineError   an async task still running at the deadline; poll it later
    │   ├── StorageTransientError   object store timeouts, 5xx, connection drops
    │   ├── InputTransientError     an edit input's source timed out or answered 429/5xx
    │   └── ShardRunError           shards run as flow runs elsewhere did not all finish;
    │                               rerunning the manifest renders only what is missing
    ├── AmbiguousError              the request may have reached the provider and been billed
    │   │                           (read timeout, connection lost mid-response); retry only
    │   │                           within a separate, small budget
    │   └── ProviderAmbiguousError  a provider call whose outcome is unknown
    ├── PlanHelperError             the second process of a two-process plan failed or vanished
    ├── ProviderUnavailableError    the circuit breaker stopped calling a provider that refused
    │                               every call (bad key, arrears) or could not be reached:
    │                               leave the row unrendered for the next run, never failed
    └── PermanentError              record and move on; retrying cannot help
        ├── ConfigError             bad settings (unknown region, missing key for --real …)
        ├── ManifestError           a manifest that cannot be read at all, or --strict refusals
        ├── ProviderError           the provider refused the request (400/401/403, arrears)
        │   ├── ModerationError     DataInspectionFailed: content moderation, its own status
        │   ├── ResultExpiredError  a result URL or task id that is past its life
        │   └── QuotaExhaustedError credits or quota gone (BFL 402, OpenAI insufficient_quota):
        │                           no further call goes to that provider in this process
        ├── ImageError              bytes that are not a valid image of the expected size
        ├── TextReadError           an image's text could not be read (an OCR worker died)
        ├── BudgetExceededError     the plan, or one more paid call, would pass the run's budget
        ├── InputError              an edit input that may not or cannot be fetched (outside the
        │                           allowed folders, a private address, too large, not found)
        └── StorageError            the store refused (access denied, no such bucket)
            ├── ObjectNotFoundError ``get`` of a key that does not exist
            └── JournalError        the run's journal cannot be written: stop submitting

Every provider error carries the provider's ``code`` and ``request_id`` so the catalog can
record them; none carries request headers, so an API key can never ride along in a message.
A provider error marked ``account_wide`` (401/403, arrears, quota used up, connection
refused) says nothing about its request: every request would get the same answer, so the
engine leaves the row for the next run and its circuit breaker stops calling.
Translate a dependency's exception at the boundary with ``raise … from exc``.
"""

from __future__ import annotations


class QwBatchError(Exception):
    """Base of every error qwbatch raises on purpose."""

    #: A short, stable class name for the catalog's ``error_code`` when no provider code exists.
    code: str = "QwBatchError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class TransientError(QwBatchError):
    """A failure that may go away if the same call is made again later."""

    code = "Transient"


class PermanentError(QwBatchError):
    """A failure that will repeat on every retry; record it and move on."""

    code = "Permanent"


class AmbiguousError(QwBatchError):
    """The request may have been accepted (and billed) by the provider; we never saw the answer."""

    code = "Ambiguous"


class ConfigError(PermanentError):
    code = "ConfigError"


class ManifestError(PermanentError):
    code = "ManifestError"


class ImageError(PermanentError):
    code = "ImageError"


class TextReadError(PermanentError):
    """The text on an image could not be read: an OCR worker process died."""

    code = "TextReadError"


class BudgetExceededError(PermanentError):
    """Spending this would pass the run's budget: refuse the run, or skip the request."""

    code = "BudgetExceeded"


class StorageError(PermanentError):
    code = "StorageError"


class InputError(PermanentError):
    """An edit input refused before any provider call; the message names the input and why."""

    code = "InputError"


class InputTransientError(TransientError):
    """An edit input's source failed in a way that may pass (timeout, 429, 5xx, reset)."""

    code = "InputTransient"


class StorageTransientError(TransientError):
    code = "StorageTransient"


class ShardRunError(TransientError):
    """Some of a run's shards, run as separate flow runs, failed, crashed or were cancelled."""

    code = "ShardRunError"


class DestBusyError(TransientError):
    """Another live run holds DEST's lease (see ``qwbatch.storage.lease``); the message
    names its host, pid and when the lease expires."""

    code = "DestBusy"


class _ProviderMixin:
    """Fields every provider-originated error carries."""

    status_code: int | None
    request_id: str | None
    #: The same answer for every request of this account or endpoint (a wrong key, arrears,
    #: quota used up, the provider unreachable): set by the provider where it classifies.
    account_wide: bool = False


class ProviderTransientError(TransientError, _ProviderMixin):
    """429, 5xx or a transport error before the request reached the server."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code or "ProviderTransient")
        self.status_code = status_code
        self.request_id = request_id
        #: Seconds the server asked us to wait (``Retry-After``), when it said.
        self.retry_after = retry_after


class ThrottledError(ProviderTransientError):
    """429 ``Throttling*``: the account's rate or quota limit was hit."""


class TaskDeadlineError(ProviderTransientError):
    """An async task had not ended when the deadline passed; it may still finish.

    The task was not cancelled: poll ``task_id`` again later (task ids live 24 h).
    """

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message, code="TaskDeadlineExceeded")
        self.task_id = task_id


class ProviderAmbiguousError(AmbiguousError, _ProviderMixin):
    """A provider call whose outcome is unknown: it may have generated and billed images."""

    def __init__(self, message: str, *, code: str = "Ambiguous") -> None:
        super().__init__(message, code=code)
        self.status_code = None
        self.request_id = None


class ProviderError(PermanentError, _ProviderMixin):
    """The provider refused the request; the same request will be refused again."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code or "ProviderError")
        self.status_code = status_code
        self.request_id = request_id


class ModerationError(ProviderError):
    """Input or output blocked by the provider's content moderation."""


class ResultExpiredError(ProviderError):
    """A result URL or task id that the provider no longer serves (past its 24 h life)."""


class QuotaExhaustedError(ProviderError):
    """The account's credits or quota are gone: the client sends that provider nothing more."""

    account_wide = True


class ProviderUnavailableError(QwBatchError):
    """The circuit breaker (``render.breaker``) stopped calling the provider: its first calls
    were all refused account-wide or never connected. Not retried, not recorded as a row's
    failure: the row is left unrendered for the next run."""

    code = "ProviderUnavailable"


class ObjectNotFoundError(StorageError):
    """``get`` of a key that does not exist in the store."""

    code = "NotFound"


class JournalError(StorageError):
    """The run's journal cannot be written, so nothing more may be sent to the provider.

    Raised out of the shard (never recorded as a row's failure): a request that cannot be
    journaled before it is sent could be paid for twice after a crash.
    """

    code = "JournalError"


class PlanHelperError(QwBatchError):
    """The second process of a plan made in two (a large manifest) failed or vanished."""

    code = "PlanHelper"
