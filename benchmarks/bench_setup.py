"""The benchmark's model and data, built from real ``transformers`` classes and saved where every runner loads
them from (so each runner, in its own process, trains the same weights on the same pairs).

``small`` (CPU): LLaVA layout, CLIP vision 4 layers x 128 at patch 14, Llama 4 layers x 256 with GQA (8 query
heads, 2 key/value heads), vocabulary padded to 32064. 224 px images give 256 image tokens, 448 px 1024.
``large`` (GPU): CLIP 24 x 1024 at 336 px (576 image tokens), Llama 16 x 2048 with GQA (32 / 8 heads),
about 1.2B parameters in all.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

SCALES = {
    "small": dict(vision_hidden=128, vision_layers=4, vision_heads=2, hidden=256, layers=4, heads=8, kv_heads=2,
                  intermediate=688),
    "large": dict(vision_hidden=1024, vision_layers=24, vision_heads=16, hidden=2048, layers=16, heads=32,
                  kv_heads=8, intermediate=5632),
}
PATCH = 14
VOCAB = 32064
LORA = dict(r=16, alpha=32)
BETA = 0.1


def image_size(image_tokens: int) -> int:
    side = round(image_tokens ** 0.5)
    if side * side != image_tokens:
        raise ValueError(f"--image-tokens must be a square number, got {image_tokens}")
    return side * PATCH


def build_model(folder: Path, scale: str, image_tokens: int, seed: int = 0) -> Path:
    """Random-weight LLaVA-style model + processor saved in ``folder`` (reused when already there)."""
    if (folder / "config.json").exists():
        return folder
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from vlmdpo.tiny_models import LLAVA_CHAT_TEMPLATE, train_tokenizer

    size = SCALES[scale]
    pixels = image_size(image_tokens)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer()
    vision = CLIPVisionConfig(image_size=pixels, patch_size=PATCH, hidden_size=size["vision_hidden"],
                              intermediate_size=4 * size["vision_hidden"], num_hidden_layers=size["vision_layers"],
                              num_attention_heads=size["vision_heads"], projection_dim=size["vision_hidden"])
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                       num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                       num_key_value_heads=size["kv_heads"], max_position_embeddings=4096,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": pixels},
                                           crop_size={"height": pixels, "width": pixels}),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def _words(tokenizer, rng: random.Random, target_tokens: int, vocabulary: list[str]) -> str:
    """Words from ``vocabulary`` until the text is ``target_tokens`` tokens long (as a response is rendered)."""
    words = []
    while len(tokenizer(" " + " ".join(words), add_special_tokens=False)["input_ids"]) < target_tokens:
        words.append(rng.choice(vocabulary))
    return " ".join(words)


def build_pairs(folder: Path, processor, image_tokens: int, num_pairs: int, seed: int = 0,
                response_tokens: tuple[int, int] = (30, 300)) -> Path:
    """``num_pairs`` rows (one noise image, a question, two responses of independent random length in
    ``response_tokens``), as a ``datasets`` folder; also ``lengths.json`` with their token counts."""
    if (folder / "dataset_info.json").exists():
        return folder
    import datasets
    import numpy as np
    from PIL import Image

    from vlmdpo.tiny_models import _CORPUS

    rng = random.Random(seed)
    vocabulary = sorted(set(_CORPUS.replace(".", " ").replace(",", " ").replace("?", " ").split()))
    tokenizer = processor.tokenizer
    side = image_size(image_tokens)
    noise = np.random.default_rng(seed)
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for _ in range(num_pairs):
        rows["images"].append([Image.fromarray(noise.integers(0, 256, (side, side, 3), dtype=np.uint8))])
        rows["prompt"].append(_words(tokenizer, rng, rng.randint(8, 40), vocabulary) + "?")
        for field in ("chosen", "rejected"):
            rows[field].append(_words(tokenizer, rng, rng.randint(*response_tokens), vocabulary))
    text = datasets.Value("string")
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "prompt": text, "chosen": text,
                                  "rejected": text})
    tmp = folder.with_name(folder.name + ".tmp")
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp))
    tmp.replace(folder)
    return folder


def perturb_lora(model, seed: int = 1, scale: float = 0.02) -> None:
    """Give every ``lora_B`` small seeded random values (peft starts them at 0, where the first DPO loss is
    exactly ln 2 whatever the code computes; both runners apply the same values)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_((torch.randn(param.shape, generator=generator) * scale).to(param.dtype))


def summary(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {"text": {k: config["text_config"][k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "vision": {k: config["vision_config"][k] for k in ("hidden_size", "num_hidden_layers", "image_size")}}
