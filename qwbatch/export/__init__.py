"""Exports: a DEST's images and catalog records as a dataset other libraries read.

``qwbatch export DEST --format hf|webdataset|files --to TARGET`` is :func:`export`.
:mod:`.samples` chooses the rows, names and splits them; :mod:`.writers` holds one
``*SampleWriter`` class per format; :mod:`.card` the Hugging Face dataset card;
:mod:`.exporter` streams samples into shards, resumably; for the ``files`` format
:mod:`.paths` places images by ``--path-template`` and :mod:`.finals` packs ``--zip``.
See ``docs/export.md``.
"""

from qwbatch.export.exporter import FORMATS, ExportResult, Format, ShardDone, export

__all__ = ["FORMATS", "ExportResult", "Format", "ShardDone", "export"]
