"""Prefect flows for qwbatch: thin orchestration over :mod:`qwbatch.runs.runner`."""
