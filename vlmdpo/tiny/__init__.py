"""Tiny random-weight VLMs of the real ``transformers`` classes, with a locally trained tokenizer: what
``tiny:<family>`` model names load, the test suite's models and the benchmarks'; ``support`` is the support
matrix proven on them."""

from vlmdpo.tiny.models import FAMILIES, build_tiny_vlm, tiny_vlm, train_tokenizer

__all__ = ["FAMILIES", "build_tiny_vlm", "tiny_vlm", "train_tokenizer"]
