"""Request keys: a pinned canonical form, sensitivity to every field, derived seeds."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from qwbatch.core.keys import (
    KEY_VERSION,
    SEED_MAX,
    RequestFields,
    canonical_request,
    derive_seed,
    key_and_seed,
    key_of,
    request_key,
)
from qwbatch.core.types import RenderRequest

SHA_A = "a" * 64
SHA_B = "b" * 64

BASE: dict[str, Any] = {
    "model": "qwen-image-2.0",
    "mode": "edit",
    "prompt": "Put the mug on a marble counter, 「早安」 in neon",
    "negative_prompt": "blurry",
    "size": "1024*1024",
    "n": 2,
    "seed": 42,
    "prompt_extend": False,
    "watermark": False,
    "input_sha256": (SHA_A, SHA_B),
}


def test_golden_canonical_form_and_key() -> None:
    # Pinned once: a change here changes every key in every catalog. Bump KEY_VERSION instead.
    assert (
        canonical_request(RequestFields(**BASE))
        == (
            '["qwbatch/1","qwen-image-2.0","edit",'
            '"Put the mug on a marble counter, 「早安」 in neon",'
            f'"blurry","1024*1024",2,false,false,["{SHA_A}","{SHA_B}"],42]'
        ).encode()
    )
    assert request_key(RequestFields(**BASE)) == (
        "6fbe85d0501fea4c27ede4bee09b718f7a6c58af25cff758cd256ac81dda1c7e"
    )


#: Keys computed before RequestFields existed (one per shape the canonical form takes):
#: a change to any of them makes every catalog row "new", and pays for it again.
PINNED: list[tuple[dict[str, Any], str, int]] = [
    (
        {"model": "qwen-image-2.0", "mode": "generate", "prompt": "a cat", "seed": 7},
        "0e3eb4c089a485bc027a0a075eb07c8b421ce0ec6deae3a726c0d7d3fc0f36b3",
        7,
    ),
    (
        {"model": "qwen-image-2.0", "mode": "generate", "prompt": "a cat"},
        "f3a4306f55e123561206009e08a2e9947e4cbbb8b499d571b870473862420b3e",
        711719066,
    ),
    (
        {
            "model": "flux-2-pro",
            "mode": "generate",
            "prompt": "a red fox, snow",
            "size": "1024*768",
            "seed": 11,
            "params": (("safety_tolerance", 2), ("output_format", "png")),
        },
        "a62d62c1f426c6ded949561d68c7913d39caba4225362989277ce314e7d53728",
        11,
    ),
    (
        {
            "model": "flux-2-pro",
            "mode": "generate",
            "prompt": "a red fox, snow",
            "size": "1024*768",
            "params": (("safety_tolerance", 2), ("output_format", "png")),
        },
        "061d5567aca7d0e9102922fc946fec12b3b88a2a7a378613483c43118d0603ef",
        1050903550,
    ),
    (
        {
            "model": "qwen-image-2.0",
            "mode": "generate",
            "prompt": "banner",
            "negative_prompt": "text",
            "size": "1456*184",
            "seed": 3,
            "prompt_extend": True,
            "watermark": True,
            "target_size": "300*250",
        },
        "1e1a600bac9448f693e407293f806de9b9bb8dc641c93490db9b8eebbe2912e3",
        3,
    ),
    (
        {
            "model": "gpt-image-1",
            "mode": "edit",
            "prompt": 'é "q" \\ \u2028',
            "negative_prompt": "",
            "size": "1024*1024",
            "n": 3,
            "prompt_extend": False,
            "watermark": True,
            "input_sha256": (SHA_A,),
            "params": (("quality", "high"),),
            "target_size": "512*512",
        },
        "734aae5d64c8173820be0df686bd485cb87303379fa5a3a263ac10a8d1627f95",
        1310631102,
    ),
]


@pytest.mark.parametrize(("fields", "key", "seed"), PINNED)
def test_pinned_keys_and_seeds(fields: dict[str, Any], key: str, seed: int) -> None:
    request = RequestFields(**fields)
    assert key_and_seed(request) == (key, seed)
    assert request_key(request) == key
    if request.seed is None:
        assert derive_seed(request) == seed


def test_request_fields_are_frozen() -> None:
    fields = RequestFields(**BASE)
    with pytest.raises(AttributeError):
        fields.seed = 1  # type: ignore[misc]


def test_golden_derived_seed() -> None:
    no_seed = {k: v for k, v in BASE.items() if k != "seed"}
    assert derive_seed(RequestFields(**no_seed)) == 906155965


def test_key_and_seed_follow_the_documented_formulas() -> None:
    assert (
        request_key(RequestFields(**BASE))
        == hashlib.sha256(canonical_request(RequestFields(**BASE))).hexdigest()
    )
    no_seed = {k: v for k, v in BASE.items() if k != "seed"}
    digest = hashlib.sha256(canonical_request(RequestFields(**no_seed, seed=None))).digest()
    assert canonical_request(RequestFields(**no_seed, seed=None)).endswith(b",null]")
    assert derive_seed(RequestFields(**no_seed)) == int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@pytest.mark.parametrize(
    "prompt",
    [
        'quote " backslash \\ slash /',
        "control \x00\x01\x08\t\n\x0b\x0c\r\x1f and \x7f \x80 \u2028 \u2029",
        "emoji 🧋 and CJK 漢字 and combining é",
        "",
    ],
)
def test_canonical_form_is_compact_json(prompt: str) -> None:
    fields = {**BASE, "prompt": prompt, "negative_prompt": None, "prompt_extend": None}
    expected = [
        KEY_VERSION,
        fields["model"],
        fields["mode"],
        prompt,
        None,
        fields["size"],
        fields["n"],
        None,
        fields["watermark"],
        list(fields["input_sha256"]),
        42,
    ]
    encoded = json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    assert canonical_request(RequestFields(**fields)) == encoded
    assert json.loads(canonical_request(RequestFields(**fields))) == expected


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("model", "qwen-image-2.0-pro"),
        ("mode", "generate"),
        ("prompt", "Put the mug on a marble counter"),
        ("negative_prompt", None),
        ("negative_prompt", "blurry "),
        ("size", "1024*1023"),
        ("size", None),
        ("n", 1),
        ("seed", 43),
        ("prompt_extend", True),
        ("prompt_extend", None),
        ("watermark", True),
        ("input_sha256", (SHA_B, SHA_A)),  # order matters
        ("input_sha256", (SHA_A,)),
        ("input_sha256", ()),
    ],
)
def test_every_field_changes_the_key(field: str, other: Any) -> None:
    assert request_key(RequestFields(**{**BASE, field: other})) != request_key(
        RequestFields(**BASE)
    )


def _request(**changes: Any) -> RenderRequest:
    fields = {**BASE, **changes}
    return RenderRequest(
        row_id=changes.get("row_id", "row-1"),
        row_number=changes.get("row_number", 0),
        request_key="",
        model=fields["model"],
        mode=fields["mode"],
        prompt=fields["prompt"],
        negative_prompt=fields["negative_prompt"],
        size=fields["size"],
        n=fields["n"],
        seed=fields["seed"],
        prompt_extend=fields["prompt_extend"],
        watermark=fields["watermark"],
        input_images=changes.get("input_images", ("a.png", "b.png")),
        input_sha256=fields["input_sha256"],
        tags=changes.get("tags", ()),
    )


def test_id_tags_row_number_and_input_uris_are_not_in_the_key() -> None:
    base = key_of(_request())
    assert base == request_key(RequestFields(**BASE))
    assert key_of(_request(row_id="another-row", row_number=99)) == base
    assert key_of(_request(tags=(("campaign", "spring"), ("sku", "123")))) == base
    assert key_of(_request(input_images=("s3://bucket/a.png", "https://x/b.png"))) == base


def test_derived_seed_is_deterministic_and_in_range() -> None:
    no_seed = {k: v for k, v in BASE.items() if k != "seed"}
    seeds = {derive_seed(RequestFields(**{**no_seed, "prompt": f"prompt {i}"})) for i in range(200)}
    assert all(0 <= s <= SEED_MAX for s in seeds)
    assert len(seeds) == 200  # no accidental constant
    assert derive_seed(RequestFields(**no_seed)) == derive_seed(RequestFields(**no_seed))
    assert derive_seed(RequestFields(**no_seed)) != derive_seed(
        RequestFields(**{**no_seed, "n": 1})
    )


def test_missing_seed_folds_onto_the_derived_seed() -> None:
    no_seed = {k: v for k, v in BASE.items() if k != "seed"}
    derived = derive_seed(RequestFields(**no_seed))
    key, seed = key_and_seed(RequestFields(**no_seed, seed=None))
    assert seed == derived
    # Intended: "no seed" and "seed = the derived value" ask for the same pixels.
    assert (
        key
        == request_key(RequestFields(**no_seed, seed=derived))
        == request_key(RequestFields(**no_seed))
    )
    assert key != request_key(RequestFields(**no_seed, seed=(derived + 1) % (SEED_MAX + 1)))


def test_key_and_seed_keeps_a_given_seed() -> None:
    key, seed = key_and_seed(RequestFields(**BASE))
    assert (key, seed) == (request_key(RequestFields(**BASE)), 42)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"prompt": "a", "negative_prompt": "bc"}, {"prompt": "ab", "negative_prompt": "c"}),
        ({"prompt": 'a","b'}, {"prompt": "a", "negative_prompt": "b"}),
        ({"negative_prompt": None}, {"negative_prompt": "null"}),
        ({"size": None}, {"size": "null"}),
        ({"prompt_extend": None}, {"prompt_extend": False}),
        ({"input_sha256": ("ab", "c")}, {"input_sha256": ("a", "bc")}),
        ({"input_sha256": ("a,b",)}, {"input_sha256": ("a", "b")}),
        ({"model": "m", "mode": "edit"}, {"model": "m,edit", "mode": ""}),
    ],
)
def test_no_field_boundary_collisions(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert canonical_request(RequestFields(**{**BASE, **left})) != canonical_request(
        RequestFields(**{**BASE, **right})
    )
    assert request_key(RequestFields(**{**BASE, **left})) != request_key(
        RequestFields(**{**BASE, **right})
    )


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1])
def test_seed_out_of_range_is_refused(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        request_key(RequestFields(**{**BASE, "seed": seed}))


def test_seed_bounds_are_accepted() -> None:
    assert request_key(RequestFields(**{**BASE, "seed": 0})) != request_key(
        RequestFields(**{**BASE, "seed": SEED_MAX})
    )


def test_key_is_64_hex_characters() -> None:
    key = request_key(RequestFields(**BASE))
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert key == key.lower()
