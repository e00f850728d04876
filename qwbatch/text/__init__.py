"""Text checks: read the words on a rendered image back (OCR) and judge them.

::

    normalise.py  how two spellings are compared: NFKC, whitespace removed, case folded
    match.py      character error rate of each expected string against the best-matching
                  span of what was read; the verdict an image gets (TextVerdict); the
                  lines read where each string was asked for (read_lines, for display)
    ocr.py        the OCR engine (RapidOCR, PP-OCRv4, Chinese + English, offline, CPU),
                  loaded once per worker process
    reader.py     TextReader: reads images in worker processes, off the event loop

Example::

    async with TextReader(workers=2) as reader:
        found = await reader.read(png_bytes)
    verdict = judge(("秋季新品", "Lantern Night"), found, max_cer=0.0)
    verdict.ok, verdict.cer
"""

from qwbatch.text.match import TextVerdict, cer_in, judge, read_lines
from qwbatch.text.normalise import normalise
from qwbatch.text.reader import TextReader, default_workers

__all__ = [
    "TextReader",
    "TextVerdict",
    "cer_in",
    "default_workers",
    "judge",
    "normalise",
    "read_lines",
]
