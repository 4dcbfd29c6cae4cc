"""The benchmark's models and data, saved where every runner loads them from (so each runner, in its own process,
trains the same weights on the same pairs). The models are ``vlmdpo.tiny``'s ``llava`` and ``qwen2_vl`` builders
(real ``transformers`` classes, random weights) at the sizes below.

Two layouts (``MODELS``), the same language model shapes for both at each scale:

- ``llava``: CLIP vision tower at patch 14 (CLS token dropped), MLP projector, Llama with GQA; a fixed number
  of image tokens per image, ``(side / 14) ** 2``: 224 px give 256, 448 px 1024, 672 px 2304.
- ``qwen2_vl``: Qwen2-VL's vision tower (patch 14, 2x2 patch merging, dynamic resolution) and Qwen2 decoder
  with 3-D (M-RoPE) positions; ``(side / 28) ** 2`` image tokens: 448 px give 256, 896 px 1024, 1344 px 2304.

``small`` (CPU): vision 4 layers x 128; decoder 4 layers x 256, 8 query / 2 key-value heads, MLP 688.
``large`` (GPU): the decoder of Qwen2-VL-2B (28 layers x 1536, 12 / 2 heads, MLP 8960); Qwen2-VL-2B's vision
tower (32 layers x 1280) for ``qwen2_vl``, CLIP ViT-L/14 (24 layers x 1024) for ``llava``: about 2.1B and 1.7B
parameters. Vocabulary padded to 32064 for both (Qwen2-VL-2B's is 151,936, tied).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

MODELS = ("llava", "qwen2_vl")
TEXT = {  # ``vlmdpo.tiny.TinySizes`` of the decoder, per scale
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=688),
    "large": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960),
}
VISION = {  # ``TinySizes`` of the vision tower, per model and scale (CLIP's MLP is 4x wide in ``llava`` already)
    ("llava", "small"): dict(vision_hidden_size=128, vision_layers=4, vision_heads=2),
    ("llava", "large"): dict(vision_hidden_size=1024, vision_layers=24, vision_heads=16),
    ("qwen2_vl", "small"): dict(vision_hidden_size=128, vision_layers=4, vision_heads=2, vision_intermediate_size=512),
    ("qwen2_vl", "large"): dict(vision_hidden_size=1280, vision_layers=32, vision_heads=16,
                                vision_intermediate_size=5120),
}
LAYOUT = {  # per model: the rest of the layout, as in the real model
    "llava": dict(max_position_embeddings=4096),
    "qwen2_vl": dict(max_position_embeddings=32768, rope_theta=1e6),
}
SCALES = tuple(TEXT)
RESPONSE_TOKENS = {"small": (30, 300), "large": (50, 400)}
PATCH = 14
VOCAB = 32064
MAX_IMAGE_TOKENS = 4096  # Qwen2-VL's processor keeps every image up to this many tokens at its own size
LORA = dict(r=16, alpha=32)
BETA = 0.1


def image_size(image_tokens: int, model: str = "llava") -> int:
    """Side in pixels of the square image that gives ``image_tokens`` image tokens."""
    side = round(image_tokens ** 0.5)
    if side * side != image_tokens:
        raise ValueError(f"--image-tokens must be a square number, got {image_tokens}")
    return side * PATCH * (2 if model == "qwen2_vl" else 1)


def model_folder(root: Path, model: str, scale: str, image_tokens: int) -> Path:
    """Where the model is saved: LLaVA's depends on the image size (CLIP's position table), Qwen2-VL's not."""
    name = f"{model}-{scale}" if model == "qwen2_vl" else f"{model}-{scale}-{image_tokens}tok"
    return Path(root) / name / "model"


def sizes(model: str, scale: str, image_tokens: int) -> dict:
    """The ``vlmdpo.tiny.build_tiny_vlm`` sizes of ``model``'s layout at ``scale``. LLaVA's image size is fixed
    by ``image_tokens``; Qwen2-VL's processor takes images up to twice ``image_size`` a side, so one saved model
    serves every ``--image-tokens`` up to ``MAX_IMAGE_TOKENS``."""
    side = image_size(image_tokens, "llava") if model == "llava" else image_size(MAX_IMAGE_TOKENS, model) // 2
    return dict(image_size=side, patch_size=PATCH, vocab_size=VOCAB, **TEXT[scale], **VISION[(model, scale)],
                **LAYOUT[model])


def build(model: str, scale: str, image_tokens: int, seed: int = 0):
    """``(model, processor)`` of ``model``'s layout at ``scale``, random weights drawn from ``seed`` on the
    current ``torch`` default device."""
    from vlmdpo.tiny.models import build_tiny_vlm

    return build_tiny_vlm(model, seed=seed, **sizes(model, scale, image_tokens))


def build_model(folder: Path, model: str, scale: str, image_tokens: int, seed: int = 0,
                device: str = "cpu") -> Path:
    """Random-weight model + processor of ``model``'s layout saved in ``folder`` (reused when already there).

    ``device`` is only where the random weights are drawn (``cuda`` draws 2B of them in seconds); ``large``
    models are saved in bfloat16, the dtype they run in.
    """
    if (folder / "config.json").exists():
        return folder
    with torch.device(device):
        built, processor = build(model, scale, image_tokens, seed)
    if scale == "large":
        built.to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    built.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def _words(tokenizer, rng: random.Random, target_tokens: int, vocabulary: list[str]) -> str:
    """Words from ``vocabulary`` until the text is ``target_tokens`` tokens long (as a response is rendered)."""
    words = []
    while len(tokenizer(" " + " ".join(words), add_special_tokens=False)["input_ids"]) < target_tokens:
        words.append(rng.choice(vocabulary))
    return " ".join(words)


def build_pairs(folder: Path, processor, side: int, num_pairs: int, seed: int = 0,
                response_tokens: tuple[int, int] = (30, 300)) -> Path:
    """``num_pairs`` rows (one ``side`` x ``side`` noise image, a question of 8-40 tokens, two responses of
    independent random length in ``response_tokens``), as a ``datasets`` folder."""
    if (folder / "dataset_info.json").exists():
        return folder
    import datasets
    import numpy as np
    from PIL import Image

    from vlmdpo.tiny.tokenizer import CORPUS

    rng = random.Random(seed)
    vocabulary = sorted(set(CORPUS.replace(".", " ").replace(",", " ").replace("?", " ").split()))
    tokenizer = processor.tokenizer
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


def parameter_count(folder: Path) -> int:
    """Parameters of the saved model (counted on the meta device: nothing is allocated)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def summary(folder: Path) -> dict:
    """The saved model's main shapes and parameter count."""
    config = json.loads((folder / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    return {"model_type": config["model_type"], "parameters": parameter_count(folder),
            "text": {k: text[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "vision": {k: vision.get(k) for k in ("hidden_size", "embed_dim", "depth", "num_hidden_layers")
                       if vision.get(k) is not None}}


def add_data_arguments(parser) -> None:
    """The arguments that choose the model and pairs (shared by ``bench_dpo`` and ``bench_flops``)."""
    parser.add_argument("--model", choices=MODELS, default="llava", help="the layout to train")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small (CPU, ~20M parameters) or large (GPU, ~2B: Qwen2-VL-2B's shapes)")
    parser.add_argument("--image-tokens", type=int, default=256, help="a square number: 256, 1024, 2304 "
                        "(LLaVA: 224, 448, 672 px; Qwen2-VL, 2x2 merged: 448, 896, 1344 px)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cache", default=os.path.join(os.environ.get(
        "VLMDPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vlmdpo")), "bench"))


def prepare(args) -> tuple[Path, Path]:
    """The model and pairs that ``args`` (``add_data_arguments``) name, built where missing."""
    from vlmdpo.model.load import load_processor

    model_dir = model_folder(args.cache, args.model, args.scale, args.image_tokens)
    build_model(model_dir, args.model, args.scale, args.image_tokens, device=args.device)
    data_dir = Path(args.cache) / f"{args.model}-{args.scale}-{args.image_tokens}tok" / f"pairs{args.pairs}"
    build_pairs(data_dir, load_processor(str(model_dir)), image_size(args.image_tokens, args.model), args.pairs,
                response_tokens=RESPONSE_TOKENS[args.scale])
    return model_dir, data_dir
