"""Tiny random-weight VLMs of the real ``transformers`` classes, with a locally trained tokenizer: what
``tiny:<family>`` model names load, the test suite's models and the benchmarks'. ``models`` is the registry,
``configs`` the sizes a builder takes, ``support`` the support matrix proven on them."""

from vlmdpo.tiny.configs import TinySizes
from vlmdpo.tiny.models import FAMILIES, build_tiny_vlm, tiny_vlm
from vlmdpo.tiny.tokenizer import train_tokenizer

__all__ = ["FAMILIES", "TinySizes", "build_tiny_vlm", "tiny_vlm", "train_tokenizer"]
