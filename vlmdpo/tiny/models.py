"""Tiny vision-language models built from real ``transformers`` classes: what ``tiny:<family>`` model names load.

Nothing here is downloaded: the tokenizer is a byte-level BPE trained locally with ``tokenizers``, the
weights are random, and the result is written to a folder that ``AutoModelForImageTextToText`` and
``AutoProcessor`` load with ``from_pretrained`` exactly as they would load a hub checkpoint.

Families (``FAMILIES``), chosen for the cases that differ most:

- ``"llava"``: LLaVA-1.5 layout (CLIP vision tower, MLP projector, Llama), a fixed number of image tokens
  per image and 1-D positions.
- ``"qwen2_vl"``: Qwen2-VL layout, a dynamic number of image tokens from ``image_grid_thw`` and 3-D
  (M-RoPE) positions.
- ``vlmdpo.tiny.families``: ``llava_next`` and ``llava_onevision`` (any-resolution tiles), ``idefics3`` and
  ``smolvlm`` (images per row), ``internvl``, ``mistral3`` (Pixtral), ``aya_vision`` (tiles, Cohere 2 with
  scaled logits), ``mllama`` (cross-attention to image tiles, a 4-D ``cross_attention_mask``; refused at load,
  see ``vlmdpo.model.load.BROKEN_FAMILIES``).
- ``vlmdpo.tiny.gemma``: ``gemma3`` (``token_type_ids``, a sliding-window layer), ``paligemma``
  (prefix/suffix ``token_type_ids``), ``gemma4`` (per-layer inputs, soft-capped logits, patch positions).
- ``vlmdpo.tiny.mrope``: ``qwen2_5_vl``, ``qwen3_vl`` (DeepStack), ``qwen3_5`` (linear-attention
  layers, a thinking chat template) and ``glm4v`` (half-rotary M-RoPE, turns no token closes).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import vlmdpo.tiny.families as tiny_families
import vlmdpo.tiny.gemma as tiny_gemma_families
import vlmdpo.tiny.mrope as tiny_mrope_families
from vlmdpo.tiny.families import CHATML_CHAT_TEMPLATE, LLAVA_CHAT_TEMPLATE
from vlmdpo.tiny.mrope import _mrope

SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", "<unk>", "<image>",
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]

_CORPUS = """
describe the image. what is in the picture? is there a red circle in the image? yes. no.
a large red circle, a small blue square and a green triangle. there is no dog in this photo.
the image shows a cat sitting on a table next to a cup of coffee. a man rides a bicycle down the street.
colours: red green blue yellow purple orange white black grey brown pink. shapes: circle square triangle
diamond star cross. sizes: small large tiny big. positions: top left right bottom center middle corner.
answer the question with yes or no. the quick brown fox jumps over the lazy dog. two dogs and three cats.
a person holding an umbrella in the rain. a plate of food with a fork and a knife. a train at the station.
"""


def train_tokenizer(vocab_size: int = 600, extra_tokens: tuple[str, ...] | list[str] = (),
                    named_tokens: dict[str, str] | None = None):
    """A byte-level BPE tokenizer trained on a small built-in corpus, wrapped as a fast HF tokenizer.

    Byte-level BPE never produces unknown tokens, so any caption round-trips through encode/decode.
    ``extra_tokens`` are further special tokens (a family's template tokens); ``named_tokens`` become tokenizer
    attributes a processor reads (Gemma 3's ``boi_token``...).
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    special = SPECIAL_TOKENS + [token for token in extra_tokens if token not in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=dict(named_tokens or {}),
        additional_special_tokens=special[4:],
    )


def _llava(tokenizer, image_size: int, patch_size: int, hidden_size: int, num_layers: int,
           vision_hidden_size: int, vision_layers: int, tie_word_embeddings: bool = False):
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 4, num_hidden_layers=vision_layers, num_attention_heads=2,
        projection_dim=vision_hidden_size, hidden_act="gelu",  # open_clip's ViT layout, so its weights load
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def _qwen2_vl(tokenizer, image_size: int, patch_size: int, hidden_size: int, num_layers: int,
              vision_hidden_size: int, vision_layers: int, tie_word_embeddings: bool = False):
    from transformers import (
        Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    num_heads = 4
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=2,
            max_position_embeddings=1024, rope_parameters=_mrope(hidden_size // num_heads),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=token("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie_word_embeddings,
        ),
        vision_config=dict(
            depth=vision_layers, embed_dim=vision_hidden_size, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
            patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=tie_word_embeddings,
    )
    model = Qwen2VLForConditionalGeneration(config)
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        min_pixels=(patch_size * 2) ** 2, max_pixels=4 * pixels,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHATML_CHAT_TEMPLATE,
        video_processor=Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2),
    )
    return model, processor


_MODULES = (tiny_families, tiny_gemma_families, tiny_mrope_families)
FAMILIES = {"llava": _llava, "qwen2_vl": _qwen2_vl, **{k: v for m in _MODULES for k, v in m.BUILDERS.items()}}
FAMILY_TOKENS = {k: v for m in _MODULES for k, v in m.FAMILY_TOKENS.items()}


def build_tiny_vlm(family: str = "llava", *, image_size: int = 32, patch_size: int = 8,
                   hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 32,
                   vision_layers: int = 2, tie_word_embeddings: bool = False, seed: int = 0):
    """Return ``(model, processor)``: a random-weight VLM of a real ``transformers`` class.

    Args:
        family: one of ``FAMILIES`` (``vlmdpo.tiny.support.TESTED_FAMILIES`` lists what each is tested for).
        image_size: side of the square images the processor produces.
        patch_size: vision patch size; LLaVA gets ``(image_size / patch_size) ** 2`` image tokens per image,
            Qwen2-VL a quarter of that (2x2 patch merging).
        hidden_size, num_layers: size of the language model.
        vision_hidden_size, vision_layers: size of the vision tower.
        tie_word_embeddings: share the language model's input embedding matrix with its output head.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {sorted(FAMILIES)}")
    extra, named = FAMILY_TOKENS.get(family, ((), {}))
    tokenizer = train_tokenizer(extra_tokens=extra, named_tokens=named)
    # transformers draws initial weights from the global RNG: seed a forked copy, so the caller's stream
    # (and with it, say, peft's LoRA init afterwards) does not depend on whether a tiny model was built
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = FAMILIES[family](tokenizer, image_size, patch_size, hidden_size, num_layers,
                                            vision_hidden_size, vision_layers, tie_word_embeddings)
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
