"""The benchmark's models and data, built from real ``transformers`` classes and saved where every runner loads
them from (so each runner, in its own process, trains the same weights on the same pairs).

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
TEXT = {
    "small": dict(hidden=256, layers=4, heads=8, kv_heads=2, intermediate=688),
    "large": dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960),
}
VISION = {  # per model and scale
    ("llava", "small"): dict(hidden=128, layers=4, heads=2),
    ("llava", "large"): dict(hidden=1024, layers=24, heads=16),
    ("qwen2_vl", "small"): dict(hidden=128, layers=4, heads=2),
    ("qwen2_vl", "large"): dict(hidden=1280, layers=32, heads=16),
}
SCALES = tuple(TEXT)
RESPONSE_TOKENS = {"small": (30, 300), "large": (50, 400)}
PATCH = 14
VOCAB = 32064
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


def build_model(folder: Path, model: str, scale: str, image_tokens: int, seed: int = 0,
                device: str = "cpu") -> Path:
    """Random-weight model + processor of ``model``'s layout saved in ``folder`` (reused when already there).

    ``device`` is only where the random weights are drawn (``cuda`` draws 2B of them in seconds); ``large``
    models are saved in bfloat16, the dtype they run in.
    """
    if (folder / "config.json").exists():
        return folder
    from vlmdpo.tiny.models import train_tokenizer

    torch.manual_seed(seed)
    tokenizer = train_tokenizer()
    build = _llava if model == "llava" else _qwen2_vl
    with torch.device(device):
        built, processor = build(tokenizer, TEXT[scale], VISION[(model, scale)], image_tokens)
    if scale == "large":
        built.to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    built.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def _llava(tokenizer, text: dict, vision: dict, image_tokens: int):
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from vlmdpo.tiny.models import LLAVA_CHAT_TEMPLATE

    pixels = image_size(image_tokens, "llava")
    vision_config = CLIPVisionConfig(image_size=pixels, patch_size=PATCH, hidden_size=vision["hidden"],
                                     intermediate_size=4 * vision["hidden"], num_hidden_layers=vision["layers"],
                                     num_attention_heads=vision["heads"], projection_dim=vision["hidden"])
    text_config = LlamaConfig(vocab_size=VOCAB, hidden_size=text["hidden"], intermediate_size=text["intermediate"],
                              num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
                              num_key_value_heads=text["kv_heads"], max_position_embeddings=4096,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": pixels},
                                           crop_size={"height": pixels, "width": pixels}),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    return LlavaForConditionalGeneration(config), processor


def _qwen2_vl(tokenizer, text: dict, vision: dict, image_tokens: int):
    """Qwen2-VL-2B's layout. The processor keeps every benchmark image at its own size (256 to 4096 image
    tokens), so one saved model serves every ``--image-tokens``."""
    from transformers import (
        Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from vlmdpo.tiny.families import CHATML_CHAT_TEMPLATE

    token = tokenizer.convert_tokens_to_ids
    head_dim = text["hidden"] // text["heads"]
    third = head_dim // 2 // 3  # 128 -> [16, 24, 24], Qwen2-VL-2B's split
    mrope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [head_dim // 2 - 2 * third, third, third]}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=text["hidden"], intermediate_size=text["intermediate"],
                         num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
                         num_key_value_heads=text["kv_heads"], max_position_embeddings=32768,
                         rope_parameters=mrope, bos_token_id=tokenizer.bos_token_id, eos_token_id=token("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False),
        vision_config=dict(depth=vision["layers"], embed_dim=vision["hidden"], hidden_size=text["hidden"],
                           num_heads=vision["heads"], mlp_ratio=4, patch_size=PATCH, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=False)
    merged = (2 * PATCH) ** 2  # pixels per image token
    image_processor = Qwen2VLImageProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                                            min_pixels=4 * merged, max_pixels=4096 * merged)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHATML_CHAT_TEMPLATE,
        video_processor=Qwen2VLVideoProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2))
    return Qwen2VLForConditionalGeneration(config), processor


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

    from vlmdpo.tiny.models import _CORPUS

    rng = random.Random(seed)
    vocabulary = sorted(set(_CORPUS.replace(".", " ").replace(",", " ").replace("?", " ").split()))
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
