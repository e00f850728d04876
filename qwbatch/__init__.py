"""qwbatch: batch image generation and editing with Qwen-Image, at scale, without paying twice."""

from qwbatch.core.version import __version__

__all__ = ["__version__"]
