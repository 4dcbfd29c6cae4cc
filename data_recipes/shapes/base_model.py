"""The demo's base VLM: a LLaVA-style model whose vision tower starts from the CLIP judge's image tower.

A ViT trained only through a language model's caption loss learns slowly (the LM first learns the caption
prior and ignores the image). LLaVA itself starts from a contrastively trained CLIP vision tower; so does
this recipe: the judge, trained with open_clip on shapes image-caption pairs, gives its image tower to the
``transformers`` ``CLIPVisionModel`` inside ``LlavaForConditionalGeneration``. Everything else (projector,
language model) starts random and is trained with the package's own loop (loss ``sft``, full fine-tuning, the
vision tower kept fixed as LLaVA keeps it: ``base.frozen_parts``).
"""

from __future__ import annotations

import torch


def open_clip_vision_state_dict(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an open_clip ``VisionTransformer``'s weights onto ``transformers``' ``CLIPVisionTransformer`` names.

    The key layout is the one of the original OpenAI-to-transformers CLIP conversion: packed ``in_proj``
    attention weights are split into q, k and v; ``ln_pre``/``ln_post`` become ``pre_layrnorm`` /
    ``post_layernorm``. The projection to the joint embedding space has no counterpart and is dropped.
    """
    source = visual.state_dict()
    prefix = ""
    out = {
        prefix + "embeddings.class_embedding": source["class_embedding"],
        prefix + "embeddings.patch_embedding.weight": source["conv1.weight"],
        prefix + "embeddings.position_embedding.weight": source["positional_embedding"],
        prefix + "pre_layrnorm.weight": source["ln_pre.weight"],
        prefix + "pre_layrnorm.bias": source["ln_pre.bias"],
        prefix + "post_layernorm.weight": source["ln_post.weight"],
        prefix + "post_layernorm.bias": source["ln_post.bias"],
    }
    num_layers = len(visual.transformer.resblocks)
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for i in range(num_layers):
        block, layer = f"transformer.resblocks.{i}.", f"{prefix}encoder.layers.{i}."
        for old, new in names.items():
            for kind in ("weight", "bias"):
                out[f"{layer}{new}.{kind}"] = source[f"{block}{old}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = source[f"{block}attn.in_proj_{kind}"].chunk(3, dim=0)
            for name, value in zip(("q", "k", "v"), (q, k, v)):
                out[f"{layer}self_attn.{name}_proj.{kind}"] = value
    return {key: value.detach().clone() for key, value in out.items()}


def build_base_vlm(judge, *, hidden_size: int = 128, num_layers: int = 3, seed: int = 0):
    """A tiny LLaVA whose vision tower is the judge's image tower; returns ``(model, processor)``.

    The judge's config fixes the image size, patch size, width and depth of the vision tower; ``seed`` the
    random initial weights of the rest (drawn without touching the caller's global RNG).
    """
    from vlmdpo.tiny.models import build_tiny_vlm

    vision_cfg = judge.model_config["vision_cfg"]
    width = vision_cfg["width"]
    heads = width // vision_cfg.get("head_width", 64)
    if heads != 2 or vision_cfg.get("mlp_ratio", 4.0) != 4.0:
        raise ValueError("build_base_vlm expects a judge ViT with 2 heads and mlp_ratio 4 (data_recipes.shapes.judge.TINY_CLIP_CONFIG)")
    model, processor = build_tiny_vlm(
        "llava", image_size=vision_cfg["image_size"], patch_size=vision_cfg["patch_size"],
        hidden_size=hidden_size, num_layers=num_layers, vision_hidden_size=width,
        vision_layers=vision_cfg["layers"], seed=seed)
    tower = model.model.vision_tower
    missing, unexpected = getattr(tower, "vision_model", tower).load_state_dict(
        open_clip_vision_state_dict(judge.model.visual), strict=False)
    if unexpected or missing:
        raise RuntimeError(f"vision weights did not map cleanly: missing {missing}, unexpected {unexpected}")
    return model, processor
