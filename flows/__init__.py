"""Prefect flows for qwbatch: thin orchestration over :mod:`qwbatch.run.runner`."""
