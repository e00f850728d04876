"""Value objects that cross module boundaries: requests, provider results, catalog records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from qwbatch.core.uris import recorded_uri

Mode = Literal["generate", "edit"]

#: The closed set of catalog statuses.
Status = Literal[
    "succeeded",  # an image was generated, stored and verified
    "failed",  # the request ended without an image (error_code says why)
    "moderated",  # blocked by the provider's content moderation
    "deduplicated",  # an identical request already has an output; nothing was requested
    "ambiguous",  # the provider may have billed it but we never got the answer
    "expired",  # the provider succeeded but its result URL expired before we fetched it
    "skipped_budget",  # not rendered because the run's budget would be exceeded
    "text_mismatch",  # stored, but its expected text did not read right after every re-roll
]
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """One validated, normalised manifest row, ready to send.

    ``size`` is ``"W*H"`` or None (the model's default); ``seed`` is always set (derived from
    the request key when the manifest left it empty). ``request_key`` identifies the output.
    """

    row_id: str
    row_number: int
    request_key: str
    model: str
    mode: Mode
    prompt: str
    negative_prompt: str | None = None
    size: str | None = None
    n: int = 1
    seed: int = 0
    prompt_extend: bool | None = None
    watermark: bool = False
    input_images: tuple[str, ...] = ()
    input_sha256: tuple[str, ...] = ()
    #: Per input, what was done to send it (resized, converted, which output a catalog: ref
    #: named); empty when nothing was done to any input.
    input_notes: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    #: Order under a trimming budget: higher first, then manifest order; None is lowest.
    priority: int | None = None
    #: Strings that must be legible on each image (read back by OCR; not in the key).
    expected_text: tuple[str, ...] = ()
    #: Provider-specific parameters (quality, safety_tolerance, steps …), checked against the
    #: model table's ``params`` before sending; sent as given.
    params: tuple[tuple[str, Any], ...] = ()

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True, slots=True)
class ProviderImage:
    """One image the provider says it made: where to fetch it."""

    url: str
    index: int


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """What a provider call returned: image URLs plus the billing facts."""

    images: tuple[ProviderImage, ...]
    request_id: str | None = None
    task_id: str | None = None
    #: Images the provider billed (usage.image_count or usage.output_image_count).
    billed_images: int = 0
    width: int | None = None
    height: int | None = None
    actual_prompt: str | None = None
    #: The prompt the task was created with, as the provider echoes it (async tasks only).
    orig_prompt: str | None = None
    #: Per-image failures inside a partly successful n>1 request: (code, message).
    item_errors: tuple[tuple[str, str], ...] = ()
    #: What the provider reported the call cost, in the price table's currency (BFL's
    #: ``cost`` credits / 100, OpenAI's usage tokens × token prices); None when it bills
    #: per image (DashScope), and the cost is billed_images × unit price.
    cost: float | None = None


@dataclass(slots=True)
class CatalogRecord:
    """One catalog row: one output image, or one request that ended without an image."""

    run_id: str
    row_id: str
    request_key: str
    mode: str
    model: str
    prompt: str
    size: str | None
    seed: int
    status: Status
    image_index: int | None = None
    negative_prompt: str | None = None
    n: int = 1
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    #: Calls whose answer was lost after they were sent: each may have been billed.
    ambiguous_calls: int = 0
    provider_request_id: str | None = None
    provider_task_id: str | None = None
    output_uri: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    unit_price: float | None = None
    currency: str | None = None
    cost: float = 0.0
    #: What ambiguous attempts may have billed on top of ``cost`` (never seen in usage).
    possible_cost: float = 0.0
    started_at: float | None = None  # POSIX seconds
    finished_at: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    input_images: list[str] = field(default_factory=list)
    input_sha256: list[str] = field(default_factory=list)
    input_notes: list[str] = field(default_factory=list)
    #: The row's expected text (empty: not checked), what OCR read on this image, the worst
    #: expected string's character error rate, and the verdict (None: not read).
    text_expected: list[str] = field(default_factory=list)
    text_found: str | None = None
    text_cer: float | None = None
    text_ok: bool | None = None
    #: Extra renders of this image because its text read wrong (each billed, in ``cost``).
    rerolls: int = 0
    #: The output's key under DEST (``images/…/<i>.png``): where it is wherever DEST moves;
    #: derived from ``request_key`` and ``image_index`` when the catalog is written.
    output_key: str | None = None

    @classmethod
    def for_request(
        cls,
        request: RenderRequest,
        *,
        run_id: str,
        row_id: str,
        status: Status,
        tags: tuple[tuple[str, str], ...],
        **details: Any,
    ) -> CatalogRecord:
        """A row about ``request`` for manifest row ``row_id`` (the request's own, or a
        folded duplicate's with its own ``tags``): the request's key, mode, model, prompt,
        size, n, seed and inputs (URLs as :func:`qwbatch.core.uris.recorded_uri` keeps them),
        then ``details`` (status-specific columns)."""
        return cls(
            run_id=run_id,
            row_id=row_id,
            request_key=request.request_key,
            mode=request.mode,
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            size=request.size,
            n=request.n,
            seed=request.seed,
            status=status,
            tags=dict(tags),
            input_images=[recorded_uri(uri) for uri in request.input_images],
            input_sha256=list(request.input_sha256),
            input_notes=list(request.input_notes),
            **details,
        )


@dataclass(frozen=True, slots=True)
class Alias:
    """Another manifest row that asked for exactly the same request."""

    row_id: str
    row_number: int
    tags: tuple[tuple[str, str], ...] = ()
    #: The row's own input URIs and notes (the same bytes as the request's, maybe named
    #: differently): its catalog row records these.
    input_images: tuple[str, ...] = ()
    input_notes: tuple[str, ...] = ()


@dataclass(slots=True)
class PlanItem:
    """One request to render, and the other rows folded onto it."""

    request: RenderRequest
    aliases: list[Alias] = field(default_factory=list)
