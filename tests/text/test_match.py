"""Normalising and matching, row by row: Chinese, English, mixed, full-width, spaces."""

from __future__ import annotations

import pytest

from qwbatch.text import cer_in, judge, normalise, read_lines


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Lantern Night Market", "lanternnightmarket"),
        ("ＬＡＮＴＥＲＮ　２３４", "lantern234"),  # full-width letters, digits, ideographic space
        ("5.00 OK 1 Island", "5.oooklisland"),  # look-alikes: 0 O o, 1 l
        ("秋季 新品\t全场\n八折", "秋季新品全场八折"),
        ("Sat 12 Dec · 7PM", "satl2dec·7pm"),
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
        # Look-alikes OCR swaps by context count as one; other replacements still count.
        ("Matcha latte 5.00", "Matchalatte5.oo", 0.0),
        ("Illinois 1", "illinois l", 0.0),
        ("Matcha latte 5.00", "Matchalatte5.20", 1 / 15),
        # Nothing read, or nothing expected.
        ("新品", "", 1.0),
        ("", "anything", 0.0),
    ],
)
def test_cer_against_best_span(expected: str, found: str, cer: float) -> None:
    assert cer_in(expected, found) == pytest.approx(cer)


def test_read_lines_are_where_each_string_was_found() -> None:
    found = "GENERATE · seed 7\nLantern Night\nMarket\n灯笼夜鸟\nSat 12 Dec"
    assert read_lines(["Night Market", "灯笼夜市"], found) == [
        "Lantern Night",
        "Market",
        "灯笼夜鸟",
    ]
    assert read_lines(["SALE"], "") == []


def test_judge_takes_the_worst_string() -> None:
    verdict = judge(["SALE", "秋季新品"], "BIG SALE\n秋李新品", max_cer=0.0)
    assert not verdict.ok
    assert verdict.cer == pytest.approx(0.25)
    assert verdict.expected == ("SALE", "秋季新品")
    assert judge(["SALE", "秋季新品"], "BIG SALE\n秋李新品", max_cer=0.25).ok
    assert judge([], "whatever").ok
