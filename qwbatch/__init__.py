"""qwbatch: batch image generation and editing with Qwen-Image, at scale, without paying twice."""

__version__ = "0.1.0"
