"""The sizes every tiny builder takes (``TinySizes``) and the config pieces the family modules share: a decoder's
text config, a ViT's vision config, Qwen's M-RoPE parameters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a tiny VLM. The defaults build what ``tiny:<family>`` names load; the benchmarks build ~2B
    models from the same builders with larger values."""

    image_size: int = 32
    """Side of the square images the processor produces (Qwen-style dynamic resolution: up to twice this)."""
    patch_size: int = 8
    """Vision patch side; LLaVA gets ``(image_size / patch_size) ** 2`` image tokens per image."""
    hidden_size: int = 64
    """Width of the language model."""
    num_layers: int = 2
    """Decoder layers of the language model."""
    num_heads: int = 4
    """Query heads of the language model; head size is ``hidden_size / num_heads`` unless a family differs."""
    num_kv_heads: int = 2
    """Key-value heads of the language model (grouped-query attention when fewer than ``num_heads``)."""
    intermediate_size: int | None = None
    """Width of the language model's MLP; ``None``: twice ``hidden_size``."""
    vocab_size: int | None = None
    """Rows of the embedding table; ``None``: the tokenizer's size. Larger pads the table, as hub models do."""
    max_position_embeddings: int = 1024
    """Longest sequence the language model's config allows."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies, read by the families with one rotary table in their builder (``llava``
    and the M-RoPE families); the others keep their config's own."""
    vision_hidden_size: int = 32
    """Width of the vision tower."""
    vision_layers: int = 2
    """Layers of the vision tower."""
    vision_heads: int = 2
    """Attention heads of the vision tower."""
    vision_intermediate_size: int | None = None
    """Width of the vision tower's MLP; ``None``: the family's usual ratio to its width (``vision_mlp``)."""
    tie_word_embeddings: bool = False
    """Share the language model's input embedding matrix with its output head."""

    def __post_init__(self):
        for what, width, heads in (("hidden_size", self.hidden_size, self.num_heads),
                                   ("vision_hidden_size", self.vision_hidden_size, self.vision_heads)):
            if width % heads:
                raise ValueError(f"{what}={width} must be a multiple of its heads ({heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 2 * self.hidden_size)

    @property
    def head_dim(self) -> int:
        """Size of one language-model attention head."""
        return self.hidden_size // self.num_heads

    def vision_mlp(self, ratio: int = 2) -> int:
        """Width of the vision MLP: ``vision_intermediate_size``, else ``ratio`` times the tower's width."""
        return self.vision_intermediate_size or ratio * self.vision_hidden_size

    def vocab(self, tokenizer) -> int:
        """Rows of the embedding table for ``tokenizer``."""
        if self.vocab_size is not None and self.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
        return self.vocab_size or len(tokenizer)


def text_config(tokenizer, sizes: TinySizes, eos: str, *, num_layers: int | None = None, **extra) -> dict:
    """A decoder's config fields: ``sizes``, the tokenizer's ids, ``eos`` as the end-of-turn token, then
    ``extra`` (a family's own fields). ``num_layers`` overrides ``sizes.num_layers`` (a family adding a layer)."""
    return dict(vocab_size=sizes.vocab(tokenizer), hidden_size=sizes.hidden_size,
                intermediate_size=sizes.intermediate_size,
                num_hidden_layers=sizes.num_layers if num_layers is None else num_layers,
                num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
                max_position_embeddings=sizes.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids(eos),
                tie_word_embeddings=sizes.tie_word_embeddings, **extra)


def vision_config(sizes: TinySizes) -> dict:
    """A ViT's config fields (SigLIP and alike): width, depth, heads, image and patch size."""
    return dict(hidden_size=sizes.vision_hidden_size, intermediate_size=sizes.vision_mlp(),
                num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                image_size=sizes.image_size, patch_size=sizes.patch_size)


def mrope(head_dim: int, rope_theta: float = 10000.0, **extra) -> dict:
    """Rope parameters of Qwen's M-RoPE: the ``head_dim / 2`` frequencies split into (time, height, width)."""
    third = head_dim // 2 // 3
    return {"rope_type": "default", "rope_theta": rope_theta,
            "mrope_section": [head_dim // 2 - 2 * third, third, third], **extra}


def alternating_attention(num_layers: int, end_with_full: bool = False) -> list[str]:
    """``layer_types`` alternating sliding-window and full attention: starting with a sliding layer (Gemma 3),
    or ending with a full one (Cohere 2, Gemma 4), so that even one layer is the family's kind."""
    pattern = ["sliding_attention", "full_attention"] * num_layers
    return pattern[-num_layers:] if end_with_full else pattern[:num_layers]
