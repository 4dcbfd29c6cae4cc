"""FLOP counts of a DPO step on the benchmark's batches: the least an exact step needs, what vlmdpo's fast
path computes, and what TRL computes; and this machine's matmul rate, to turn FLOPs into an ideal time.

Counted: matmuls (2 FLOPs per multiply-add) of the vision tower, projector, decoder (frozen weights and LoRA),
attention (QK^T and AV) and LM head. Not counted: element-wise work (norms, activations, softmaxes), which is
memory-bound. Backward of a frozen matmul = its input gradient (1x the forward); of a LoRA matmul = input and
weight gradients (2x); of attention = 2x the forward. Layer 0's input gradients are not needed (embeddings and
image features are frozen) and autograd skips them, so they are not counted anywhere.

An exact step needs, per pair: the image once (forward only: the vision side is frozen); the prompt once and
each response once through the decoder, forward and backward for the policy and forward for the reference;
the LM head at the scored positions only, forward and backward for the policy (logits and d/dhidden) and
forward for the reference. Of the last decoder layer, the prompt's rows need only their keys and values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Shapes:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    vision_tokens: int  # per image, CLS included
    image_tokens: int  # per image, after the projector
    patch_pixels: int  # 3 * patch * patch
    lora_r: int

    @classmethod
    def of(cls, config, lora_r: int) -> Shapes:
        """From a LLaVA-style model config."""
        text, vision = config.text_config, config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return cls(text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.num_attention_heads,
                   text.num_key_value_heads, text.vocab_size, vision.hidden_size, vision.num_hidden_layers,
                   vision.intermediate_size, patches + 1, patches, 3 * vision.patch_size ** 2, lora_r)

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def layer_macs(self) -> int:
        """Multiply-adds per token of one decoder layer's frozen linear layers."""
        h, kv = self.hidden, self.kv_width
        return h * h + 2 * h * kv + h * h + 3 * h * self.intermediate

    def kv_macs(self) -> int:
        return 2 * self.hidden * self.kv_width

    def lora_macs(self) -> int:
        h, kv, i, r = self.hidden, self.kv_width, self.intermediate, self.lora_r
        return r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))

    def image_flops(self) -> int:
        """One image through the vision tower and projector (forward)."""
        t, hv = self.vision_tokens, self.vision_hidden
        per_layer = t * (4 * hv * hv + 2 * hv * self.vision_intermediate) + 2 * t * t * hv
        embed = (t - 1) * self.patch_pixels * hv
        projector = self.image_tokens * (hv * self.hidden + self.hidden * self.hidden)
        return 2 * (self.vision_layers * per_layer + embed + projector)


def step_flops(shapes: Shapes, prompts: list[int], responses: list[list[int]], scored: int, images: int,
               kind: str, with_reference: bool = True) -> dict[str, float]:
    """FLOPs of one step by category, for ``kind`` = ``"exact"`` (the least), ``"vlmdpo"`` or ``"trl"``;
    ``with_reference=False`` leaves the reference pass out (its log-probs precomputed).

    ``prompts``: prompt tokens per pair; ``responses``: tokens of each response per pair (chosen, rejected);
    ``scored``: response tokens scored in the batch; ``images``: images in the batch.
    """
    s = shapes
    per_token = s.layer_macs() + s.lora_macs()
    ref = 1 if with_reference else 0
    # forward + backward (frozen: 1x input grads; LoRA: 2x) for the policy, forward for the reference
    decoder_factor = lambda macs, lora: 2 * (macs + lora) + 2 * (macs + 2 * lora) + ref * 2 * macs  # noqa: E731
    attention_unit = 2 * 2 * s.hidden  # QK^T and AV, per (query, key) pair
    attention_factor = 1 + 2 + ref  # policy forward, its backward (2x), reference forward
    if kind == "trl":  # every response after its own copy of the prompt, padded to the batch's longest
        width = max(prompts) + max(max(r) for r in responses)
        tokens = 2 * len(prompts) * width
        pairs_attention = sum(width * (width + 1) / 2 for _ in prompts for _ in (0, 1))
        decoder = decoder_factor(s.layer_macs() * s.layers, s.lora_macs() * s.layers) * tokens
        head = (1 + 2 + ref) * 2 * s.hidden * s.vocab * scored  # its backward recomputes the logits
        vision = (2 + 2 * ref) * images * s.image_flops()  # chosen and rejected, policy and reference
    else:
        tokens = sum(p + sum(r) for p, r in zip(prompts, responses))
        prompt_tokens = sum(prompts)
        decoder = decoder_factor(s.layer_macs() * s.layers, s.lora_macs() * s.layers) * tokens
        if kind == "exact":  # the prompt's rows of the last layer: keys and values only
            last_layer_waste = decoder_factor(s.layer_macs() - s.kv_macs(), s.lora_macs()) * prompt_tokens
            decoder -= last_layer_waste
        causal = sum(p * (p + 1) / 2 + sum(c * p + c * (c + 1) / 2 for c in r) for p, r in zip(prompts, responses))
        dense = sum(p * (p + 1) / 2 + sum(c * (p + c) for c in r) for p, r in zip(prompts, responses))
        pairs_attention = causal if kind == "exact" else dense  # vlmdpo masks the responses' own block densely
        head = (1 + 1 + ref) * 2 * s.hidden * s.vocab * scored
        vision = images * s.image_flops()
    attention = attention_factor * attention_unit * pairs_attention * s.layers
    return {"vision": vision, "decoder": decoder, "attention": attention, "lm_head": head,
            "total": vision + decoder + attention + head}


def matmul_rate(threads: int | None = None, size: int = 1024, seconds: float = 2.0) -> float:
    """This machine's float32 matmul FLOP/s (square ``size`` matrices, best of a short run)."""
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best


def batch_shapes(batch: dict) -> tuple[list[int], list[list[int]], int, int]:
    """Prompt lengths, response lengths, scored tokens and images of a collated batch."""
    prompts = batch["prompt_attention_mask"].sum(1).tolist()
    fields = [f for f in ("chosen", "rejected") if f"{f}_input_ids" in batch]
    responses = [[int(batch[f"{f}_attention_mask"][b].sum()) for f in fields] for b in range(len(prompts))]
    scored = sum(int(batch[f"{f}_completion_mask"].sum()) for f in fields)
    pixel_values = batch["vision_inputs"].get("pixel_values")
    return prompts, responses, scored, 0 if pixel_values is None else pixel_values.shape[0]
