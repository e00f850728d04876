"""The canonical form of a render request, its ``request_key``, and derived seeds.

A request key names an output: two requests with the same key would render the same images,
so a rerun, a duplicate row or another manifest asking for them again costs nothing (plan
folds them; the store already has them). The key covers everything that changes the pixels
the provider returns, and nothing else:

    model, mode, prompt, negative_prompt, size, n, prompt_extend, watermark,
    the sha256 of each input image's bytes (in order), params (when any), seed

The manifest row ``id``, its ``tags``, the input images' URIs and any priority are *not* in
the key: two rows with different ids but identical requests fold onto one key.

Canonical form (version ``qwbatch/1``)
--------------------------------------
The UTF-8 bytes of one compact JSON array, fields in this order::

    ["qwbatch/1", model, mode, prompt, negative_prompt, size, n,
     prompt_extend, watermark, [input_sha256, ...], seed]

Strings are JSON strings (only ``"``, ``\\`` and control characters are escaped, lower-case
``\\u00xx``; other characters are written as themselves), ``n`` and ``seed`` decimal integers,
``prompt_extend`` ``true``/``false``/``null``, ``watermark`` ``true``/``false``, a missing
``negative_prompt`` or ``size`` ``null``. This is byte-for-byte what
``json.dumps(array, ensure_ascii=False, separators=(",", ":"))`` produces, and also the
RFC 8785 (JCS) serialisation of the array, so any language can recompute a key. JSON string
quoting makes field boundaries unambiguous (prompt ``"a"`` + negative ``"bc"`` cannot collide
with ``"ab"`` + ``"c"``). Values are taken as given: normalising them (stripping the prompt,
``1024x768`` → ``1024*768``) is the manifest reader's job, before the key is computed.

A row with provider parameters (the ``params`` column: quality, safety_tolerance …) has one
more element before the seed: a JSON object of them, keys sorted, written as
``json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)`` does. A row
without params has none, so its key is what it always was.

``request_key`` is the lower-case hex sha256 of the canonical form (64 characters).

Derived seeds
-------------
A request without a seed gets ``derive_seed(...)``: the first four bytes of the sha256 of
the canonical form with ``seed`` = ``null``, read big-endian, top bit cleared, so an integer
in [0, 2147483647]. Reruns reproduce it and identical rows fold onto one key. The key is
then computed with that seed in place, so a row with no seed and a row whose seed equals the
derived value get the same key; that is intended (they ask for the same pixels).

Channel sizes
-------------
A request with a ``target_size`` (delivered at exactly that size, cropped or padded from
the render) appends it after the seed: ``[..., seed, "300*250"]``. Requests without one
keep the form above, so every key made before channel sizes stays as it was. The derived
seed ignores the target: a row rendered at 1456*184 gets the same seed with or without it.

Changing any of this changes every key: bump the version tag when you do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the C JSON string quoter (ensure_ascii=False)
from typing import Any

from qwbatch.core.types import RenderRequest

#: The version tag at the head of every canonical form.
KEY_VERSION = "qwbatch/1"
#: Largest seed the provider accepts (docs/providers/dashscope.md §3.4); seeds are in [0, SEED_MAX].
SEED_MAX = 2_147_483_647


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFields:
    """The fields of a render request that its key covers: what changes the pixels.

    ``seed=None`` asks for the derived seed; ``params`` are ``(name, value)`` pairs (their
    order does not matter, they are written sorted); ``target_size`` is ``W*H`` in pixels.

    >>> canonical_request(RequestFields(model="qwen-image-2.0", mode="generate", prompt="a cat"))
    b'["qwbatch/1","qwen-image-2.0","generate","a cat",null,null,1,null,false,[],null]'
    """

    model: str
    mode: str
    prompt: str
    negative_prompt: str | None = None
    size: str | None = None
    n: int = 1
    seed: int | None = None
    prompt_extend: bool | None = None
    watermark: bool = False
    input_sha256: Sequence[str] = ()
    params: Sequence[tuple[str, Any]] = ()
    target_size: str | None = None

    @classmethod
    def of(cls, request: RenderRequest) -> RequestFields:
        """The key's fields of ``request`` (its id, tags and input URIs are not among them)."""
        return cls(
            model=request.model,
            mode=request.mode,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            size=request.size,
            n=request.n,
            seed=request.seed,
            prompt_extend=request.prompt_extend,
            watermark=request.watermark,
            input_sha256=request.input_sha256,
            params=request.params,
            target_size=request.target_size,
        )


def _prefix(fields: RequestFields) -> bytes:
    """The canonical form up to (not including) the seed and the closing bracket."""
    # Written out with the C string quoter rather than json.dumps on a list: about 3x faster,
    # and keys are computed once per manifest row (millions). test_keys pins the equivalence.
    quote = encode_basestring
    negative = "null" if fields.negative_prompt is None else quote(fields.negative_prompt)
    size_json = "null" if fields.size is None else quote(fields.size)
    extend = fields.prompt_extend
    extend_json = "null" if extend is None else ("true" if extend else "false")
    inputs = ",".join(map(quote, fields.input_sha256)) if fields.input_sha256 else ""
    return (
        f'["{KEY_VERSION}",{quote(fields.model)},{quote(fields.mode)},'
        f"{quote(fields.prompt)},{negative},{size_json},{fields.n:d},"
        f"{extend_json},{'true' if fields.watermark else 'false'},[{inputs}],"
        f"{_params_json(fields.params)}"
    ).encode()


def _params_json(params: Sequence[tuple[str, Any]]) -> str:
    """The params element with its comma, or nothing for a request without params."""
    if not params:
        return ""
    text = json.dumps(dict(params), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text + ","


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed {seed} is outside [0, {SEED_MAX}]")


def _suffix(target_size: str | None) -> bytes:
    """What follows the seed: ``]``, or ``,"<target_size>"]`` when there is a target."""
    return b"]" if target_size is None else f",{encode_basestring(target_size)}]".encode()


def canonical_request(fields: RequestFields) -> bytes:
    """The canonical form (UTF-8 JSON bytes) of a request; ``seed=None`` writes ``null``.

    >>> canonical_request(
    ...     RequestFields(model="qwen-image-2.0", mode="generate", prompt="a cat", seed=7)
    ... )
    b'["qwbatch/1","qwen-image-2.0","generate","a cat",null,null,1,null,false,[],7]'
    """
    prefix = _prefix(fields)
    if fields.seed is None:
        return prefix + b"null" + _suffix(fields.target_size)
    _check_seed(fields.seed)
    return prefix + f"{int(fields.seed)}".encode("ascii") + _suffix(fields.target_size)


def _seed_from(prefix_hash: hashlib._Hash) -> int:
    """Derived seed from a hash already fed with the canonical prefix (not modified)."""
    digest = prefix_hash.copy()
    digest.update(b"null]")
    return int.from_bytes(digest.digest()[:4], "big") & SEED_MAX


def key_and_seed(fields: RequestFields) -> tuple[str, int]:
    """``(request_key, seed)`` of ``fields``: the seed given, or the derived one when its
    ``seed`` is None.

    One call does the work of ``derive_seed`` and ``request_key`` together, hashing the
    seed-less prefix once (the manifest reader calls it once per row).
    """
    digest = hashlib.sha256(_prefix(fields))
    seed = fields.seed
    if seed is None:
        seed = _seed_from(digest)
    else:
        _check_seed(seed)
    digest.update(f"{int(seed)}".encode("ascii") + _suffix(fields.target_size))
    return digest.hexdigest(), seed


def request_key(fields: RequestFields) -> str:
    """Hex sha256 (64 chars) of the canonical form; a None seed is replaced by the derived one.

    Raises ValueError for a seed outside [0, 2147483647] and UnicodeEncodeError for text
    that is not valid Unicode (lone surrogates; Arrow strings never hold them).
    """
    key, _ = key_and_seed(fields)
    return key


def derive_seed(fields: RequestFields) -> int:
    """The deterministic seed in [0, 2147483647] for ``fields`` without their seed (the
    ``seed`` and ``target_size`` of ``fields`` are ignored)."""
    return _seed_from(hashlib.sha256(_prefix(fields)))


def key_of(request: RenderRequest) -> str:
    """Recompute the key of a RenderRequest from its fields (ignores ``request.request_key``)."""
    return request_key(RequestFields.of(request))
