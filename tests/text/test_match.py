"""Normalising and matching, row by row: Chinese, English, mixed, full-width, spaces."""

from __future__ import annotations

import pytest

from qwbatch.text import cer_in, judge, normalise


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Lantern Night Market", "lanternnightmarket"),
        ("ＬＡＮＴＥＲＮ　１２３", "lantern123"),  # full-width letters, digits, ideographic space
        ("秋季 新品\t全场\n八折", "秋季新品全场八折"),
        ("Sat 12 Dec · 7PM", "sat12dec·7pm"),
        ("ﬁne", "fine"),  # a ligature
        ("Straße", "strasse"),
        ("", ""),
    ],
)
def test_normalise(raw: str, normal: str) -> None:
    assert normalise(raw) == normal


@pytest.mark.parametrize(
    ("expected", "found", "cer"),
    [
        # English: exact, other case and spaces, inside a longer line.
        ("Night Market", "Night Market", 0.0),
        ("Night Market", "LANTERN NIGHTMARKET\nSat 12 Dec", 0.0),
        ("Night Market", "Lantern Nighf Market", 1 / 11),  # one letter replaced
        ("Night Market", "Lantern Nigt Market", 1 / 11),  # one letter dropped
        ("Night Market", "Lantern Nigght Market", 1 / 11),  # one letter added
        # Chinese: exact, one character replaced, wrapped over two lines.
        ("秋季新品全场八折", "秋季新品全场八折", 0.0),
        ("秋季新品全场八折", "秋季新品全场九折", 1 / 8),
        ("秋季新品全场八折", "秋季新品\n全场八折", 0.0),
        # Mixed scripts and full-width text read back as half-width.
        ("灯笼夜市 Lantern 2026", "灯笼夜市Ｌａｎｔｅｒｎ２０２６", 0.0),
        ("灯笼夜市 Lantern 2026", "灯笼夜市 Lantem 2026", 2 / 15),  # rn read as m
        # Nothing read, or nothing expected.
        ("新品", "", 1.0),
        ("", "anything", 0.0),
    ],
)
def test_cer_against_best_span(expected: str, found: str, cer: float) -> None:
    assert cer_in(expected, found) == pytest.approx(cer)


def test_judge_takes_the_worst_string() -> None:
    verdict = judge(["SALE", "秋季新品"], "BIG SALE\n秋李新品", max_cer=0.0)
    assert not verdict.ok
    assert verdict.cer == pytest.approx(0.25)
    assert verdict.expected == ("SALE", "秋季新品")
    assert judge(["SALE", "秋季新品"], "BIG SALE\n秋李新品", max_cer=0.25).ok
    assert judge([], "whatever").ok
