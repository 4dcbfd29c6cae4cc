"""The tiny VLM registry: every family's builder (``FAMILIES``), and the functions that build one
(``build_tiny_vlm``) or save it where ``from_pretrained`` loads it (``tiny_vlm``, what ``tiny:<family>`` model
names load).

Nothing here is downloaded: the tokenizer is trained locally (``vlmdpo.tiny.tokenizer``), the weights are
random, and the saved folder loads with ``AutoModelForImageTextToText`` and ``AutoProcessor`` exactly as a hub
checkpoint does. The families, chosen for the cases that differ most, live by layout:

- ``vlmdpo.tiny.llava``: ``llava`` (a fixed number of image tokens, 1-D positions), ``llava_next`` and
  ``llava_onevision`` (any-resolution tiles), ``mistral3`` (Pixtral).
- ``vlmdpo.tiny.mrope``: ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_5``, ``glm4v`` (3-D M-RoPE positions,
  a dynamic number of image tokens from ``image_grid_thw``).
- ``vlmdpo.tiny.moe``: ``qwen3_vl_moe``, ``glm4v_moe``, ``qwen3_5_moe`` (the same, with mixture-of-experts language
  models), ``ernie4_5_vl_moe`` (3-D positions too; separate text and vision experts).
- ``vlmdpo.tiny.pixel_shuffle``: ``idefics3`` and ``smolvlm`` (images per row), ``internvl``, ``aya_vision``.
- ``vlmdpo.tiny.gemma``: ``gemma3``, ``paligemma``, ``gemma4`` (bidirectional attention within images).
- ``vlmdpo.tiny.mllama``: ``mllama`` (cross-attention to image tiles, run per image count: see
  ``vlmdpo.forward.image_groups``).
- ``vlmdpo.tiny.packed_patches``: ``minicpmv4_7``, ``molmo2``, ``ovis2_5`` (every image of a batch packed into one
  patch tensor at a size of its own, split by a per-image index; start and end markers around each image's tokens).
- ``vlmdpo.tiny.encoder_variants``: ``deepseek_vl``, ``deepseek_vl_hybrid`` (LLaVA's splice, other encoders:
  two on one image in the hybrid); ``cohere2_vision`` and ``florence2`` (an encoder-decoder), built but refused
  at load.
"""

from __future__ import annotations

import os
from pathlib import Path

import vlmdpo.tiny.encoder_variants as encoder_variants
import vlmdpo.tiny.gemma as gemma
import vlmdpo.tiny.llava as llava
import vlmdpo.tiny.mllama as mllama
import vlmdpo.tiny.moe as moe
import vlmdpo.tiny.mrope as mrope
import vlmdpo.tiny.packed_patches as packed_patches
import vlmdpo.tiny.pixel_shuffle as pixel_shuffle
from vlmdpo.tiny.configs import TinySizes
from vlmdpo.tiny.tokenizer import train_tokenizer

_MODULES = (llava, mrope, moe, pixel_shuffle, gemma, mllama, packed_patches, encoder_variants)
FAMILIES = {family: builder for module in _MODULES for family, builder in module.BUILDERS.items()}
"""family (``tiny:<family>``) -> ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``."""
FAMILY_TOKENS = {family: tokens for module in _MODULES for family, tokens in module.FAMILY_TOKENS.items()}
"""family -> (its special tokens beyond ``tokenizer.SPECIAL_TOKENS``, the named ones its processor reads)."""


def build_tiny_vlm(family: str = "llava", *, seed: int = 0, **sizes):
    """Return ``(model, processor)``: a random-weight VLM of a real ``transformers`` class.

    Args:
        family: one of ``FAMILIES`` (``vlmdpo.tiny.support.TESTED_FAMILIES`` lists what each is tested for).
        seed: the weights' seed, drawn without touching the caller's random streams.
        sizes: fields of ``vlmdpo.tiny.configs.TinySizes`` (image and patch size, widths, depths, heads,
            vocabulary, tied embeddings); the defaults build what ``tiny:<family>`` names load.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {sorted(FAMILIES)}")
    sizes = TinySizes(**sizes)
    extra, named = FAMILY_TOKENS.get(family, ((), {}))
    tokenizer = train_tokenizer(extra_tokens=extra, named_tokens=named)
    # transformers draws initial weights from the global RNG: seed a forked copy, so the caller's stream
    # (and with it, say, peft's LoRA init afterwards) does not depend on whether a tiny model was built
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = FAMILIES[family](tokenizer, sizes)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model.eval(), processor


def tiny_vlm(family: str = "llava", path: str | os.PathLike | None = None, **kwargs) -> str:
    """Build a tiny VLM (see ``build_tiny_vlm``) and save it where ``from_pretrained`` can load it.

    Returns the folder. With ``path=None`` the model goes to a cache folder keyed by the arguments, and
    an existing save there is reused.
    """
    if path is None:
        key = "-".join([family] + [f"{k}{v}" for k, v in sorted(kwargs.items())])
        root = os.environ.get("VLMDPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vlmdpo"))
        path = Path(root) / "tiny" / key
    path = Path(path)
    if not (path / "config.json").exists():
        model, processor = build_tiny_vlm(family, **kwargs)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tmp.replace(path) if not path.exists() else None
    return str(path)
