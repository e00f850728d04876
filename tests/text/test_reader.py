"""The OCR engine reads what the simulator draws, in worker processes, offline."""

from __future__ import annotations

import asyncio

import pytest

from qwbatch.core.errors import ImageError
from qwbatch.simulator import lettering
from qwbatch.simulator.render import Recipe, render
from qwbatch.text import TextReader, judge

PROMPT = 'A poster, "Lantern Night Market" above 「秋季新品全场八折」 and “Sat 12 Dec 7pm”'


def _image(*, misspell: bool, seed: int = 7, size: int = 512) -> bytes:
    recipe = Recipe(
        model="qwen-image",
        prompt=PROMPT,
        seed=seed,
        index=0,
        count=1,
        width=size,
        height=size,
        misspell=misspell,
    )
    return render(recipe)


def test_quoted_phrases_and_one_misspelling() -> None:
    phrases = lettering.quoted(PROMPT)
    assert phrases == ("Lantern Night Market", "秋季新品全场八折", "Sat 12 Dec 7pm")
    wrong = lettering.misspell(phrases, "salt")
    changed = [(a, b) for a, b in zip("".join(phrases), "".join(wrong), strict=True) if a != b]
    assert len(changed) == 1
    assert lettering.misspell(phrases, "salt") == wrong  # a pure function of its salt


def test_reader_reads_right_and_wrong_images() -> None:
    expected = lettering.quoted(PROMPT)

    async def read_both() -> tuple[str, str]:
        async with TextReader(workers=1) as reader:
            right, wrong = await asyncio.gather(
                reader.read(_image(misspell=False)), reader.read(_image(misspell=True))
            )
            with pytest.raises(ImageError):
                await reader.read(b"not an image")
            return right, wrong

    right, wrong = asyncio.run(read_both())
    assert judge(expected, right).ok, right
    verdict = judge(expected, wrong)
    assert not verdict.ok, wrong
    assert 0 < verdict.cer <= 1 / 8 + 1e-9
