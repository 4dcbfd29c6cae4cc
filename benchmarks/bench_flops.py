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

    python benchmarks/bench_flops.py --model qwen2_vl --scale large --image-tokens 2304 --pairs 24

prints the GFLOP per pair of the benchmark's batches (the same model, pairs and batches as ``bench_dpo.py``
with the same arguments; built if missing) and TRL's FLOPs over vlmdpo's: the speed-up a step bound by its
matmuls would show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    vision_tokens: int  # per image, through the vision tower (LLaVA: CLS included)
    patches: int  # per image
    image_tokens: int  # per image, after the projector
    patch_pixels: int  # input values per patch: 3 * patch * patch (Qwen2-VL: times 2 frames)
    projector_macs: int  # per image token
    lora_r: int

    @classmethod
    def of(cls, config, lora_r: int, image_tokens: int) -> Shapes:
        """From a LLaVA or Qwen2-VL model config; ``image_tokens`` per image (Qwen2-VL's depend on the image)."""
        text, vision = config.text_config, config.vision_config
        common = dict(hidden=text.hidden_size, layers=text.num_hidden_layers, intermediate=text.intermediate_size,
                      heads=text.num_attention_heads, kv_heads=text.num_key_value_heads, vocab=text.vocab_size,
                      image_tokens=image_tokens, lora_r=lora_r)
        if config.model_type == "qwen2_vl":  # 2x2 patches merged into one token: an MLP on 4 x embed_dim
            merged = 4 * vision.embed_dim
            return cls(**common, vision_hidden=vision.embed_dim, vision_layers=vision.depth,
                       vision_intermediate=vision.embed_dim * vision.mlp_ratio, vision_tokens=4 * image_tokens,
                       patches=4 * image_tokens,
                       patch_pixels=vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2,
                       projector_macs=merged * merged + merged * text.hidden_size)
        if config.model_type != "llava":
            raise ValueError(f"FLOPs are counted for llava and qwen2_vl models, not {config.model_type!r}")
        patches = (vision.image_size // vision.patch_size) ** 2
        if patches != image_tokens:
            raise ValueError(f"this LLaVA model gives {patches} image tokens, not {image_tokens}")
        return cls(**common, vision_hidden=vision.hidden_size, vision_layers=vision.num_hidden_layers,
                   vision_intermediate=vision.intermediate_size, vision_tokens=patches + 1, patches=patches,
                   patch_pixels=3 * vision.patch_size ** 2,
                   projector_macs=vision.hidden_size * text.hidden_size + text.hidden_size ** 2)

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
        embed = self.patches * self.patch_pixels * hv
        projector = self.image_tokens * self.projector_macs
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
    vision = batch["vision_inputs"]
    if "image_grid_thw" in vision:  # Qwen2-VL: pixel_values holds patches, one grid row per image
        return prompts, responses, scored, vision["image_grid_thw"].shape[0]
    pixel_values = vision.get("pixel_values")
    return prompts, responses, scored, 0 if pixel_values is None else pixel_values.shape[0]


KINDS = {"exact": ("exact", True), "vlmdpo": ("vlmdpo", True), "trl": ("trl", True),
         "vlmdpo_precomputed": ("vlmdpo", False), "exact_precomputed": ("exact", False)}


def timed_flops(model_dir: Path, data_dir: Path, batch_size: int, image_tokens: int, lora_r: int
                ) -> tuple[dict[str, dict[str, float]], int]:
    """FLOPs by kind (``KINDS``) and category, summed over the steps ``bench_dpo`` times (steps 2 .. S-1, in
    order), and the number of pairs in them."""
    import datasets
    from transformers import AutoConfig, AutoProcessor

    from vlmdpo.data.collator import PreferenceCollator
    from vlmdpo.data.rows import PreferenceDataset

    shapes = Shapes.of(AutoConfig.from_pretrained(model_dir), lora_r, image_tokens)
    pairs = PreferenceDataset(datasets.load_from_disk(str(data_dir)))
    collator = PreferenceCollator(AutoProcessor.from_pretrained(model_dir))
    totals = {name: {} for name in KINDS}
    timed_pairs = 0
    for step in range(1, len(pairs) // batch_size - 1):
        rows = [pairs[i] for i in range(step * batch_size, (step + 1) * batch_size)]
        shape = batch_shapes(collator(rows))
        timed_pairs += len(rows)
        for name, (kind, with_reference) in KINDS.items():
            for part, value in step_flops(shapes, *shape, kind=kind, with_reference=with_reference).items():
                totals[name][part] = totals[name].get(part, 0.0) + value
    return totals, timed_pairs


def main(argv: list[str] | None = None) -> dict:
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
    import bench_setup

    parser = argparse.ArgumentParser(description="GFLOP per pair of bench_dpo's timed steps")
    bench_setup.add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    model_dir, data_dir = bench_setup.prepare(args)
    totals, timed_pairs = timed_flops(model_dir, data_dir, args.batch_size, args.image_tokens,
                                      bench_setup.LORA["r"])
    out = {"model": args.model, "scale": args.scale, "image_tokens": args.image_tokens,
           **{f"{name}_gflop_per_pair": {k: v / timed_pairs / 1e9 for k, v in total.items()}
              for name, total in totals.items()},
           "trl_over_vlmdpo": totals["trl"]["total"] / totals["vlmdpo"]["total"],
           "vlmdpo_over_exact": totals["vlmdpo"]["total"] / totals["exact"]["total"]}
    if args.json:
        print(json.dumps(out))
        return out
    print(f"GFLOP per pair (matmuls), {args.scale} {args.model}, {args.image_tokens} image tokens, "
          f"{timed_pairs} timed pairs")
    print(f"  {'':<12}" + "".join(f"{name:>20}" for name in KINDS))
    for part in ("vision", "decoder", "attention", "lm_head", "total"):
        print(f"  {part:<12}" + "".join(f"{out[f'{name}_gflop_per_pair'][part]:>20.2f}" for name in KINDS))
    print(f"  TRL / vlmdpo FLOPs: {out['trl_over_vlmdpo']:.2f}x (the speed-up if both ran at one matmul rate); "
          f"vlmdpo / exact: {out['vlmdpo_over_exact']:.2f}x")
    return out


if __name__ == "__main__":
    main()
