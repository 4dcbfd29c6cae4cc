"""The shapes world's CLIP judge: a tiny open_clip model trained from scratch, NegCLIP-style.

The judge scores captions against images (``vlmdpo.eval.judge.ClipJudge``, CLIPScore). Here it is trained on
shapes image-caption pairs with open_clip's own model and loss, with one binding-swapped caption per image as
an extra negative, so it tells "a red circle and a blue square" from "a blue circle and a red square".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image
from tqdm.auto import tqdm

from vlmdpo.eval.judge import ClipJudge

# open_clip model config format (same keys as open_clip/model_configs/*.json). Sized for 64x64
# images of a few coloured shapes: 64 patches of 8x8, 2 ViT blocks, a 2-block text tower. The
# default SimpleTokenizer (its BPE vocab ships inside open_clip) gives vocab_size 49408.
TINY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_NAME = "vlmdpo-tiny-clip"



def clip_loss_with_hard_negatives(image_features: torch.Tensor, text_features: torch.Tensor,
                                  negative_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss with one extra wrong caption per image (NegCLIP, arXiv:2210.01936).

    All features (B, D) are L2-normalised; ``logit_scale`` is the (already exponentiated) temperature.
    Image i is classified among the B captions and the B hard negatives (B, 2B logits), caption i among the
    B images, as in ``open_clip.ClipLoss``; the two cross-entropies are averaged.
    """
    labels = torch.arange(len(image_features), device=image_features.device)
    logits_per_image = logit_scale * image_features @ torch.cat([text_features, negative_features]).T
    logits_per_text = logit_scale * text_features @ image_features.T
    return (torch.nn.functional.cross_entropy(logits_per_image, labels)
            + torch.nn.functional.cross_entropy(logits_per_text, labels)) / 2


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns that a model without pretrained weights is "initialized randomly": here that is the
    point (the judge trains from scratch), so the warning would only alarm the user."""
    root = logging.getLogger()
    quiet = _RandomInitFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def train_clip_judge(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    out_dir: str | Path,
    *,
    config: dict = TINY_CLIP_CONFIG,
    model_name: str = TINY_CLIP_NAME,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    hard_negatives: Sequence[str] | None = None,
) -> ClipJudge:
    """Train an open_clip model from scratch with open_clip's `ClipLoss`, save it to `out_dir`.

    `hard_negatives`, one per caption, are extra wrong captions each image is also scored against (NegCLIP,
    arXiv:2210.01936): e.g. the caption with colours swapped between two objects, so matching a bag of
    colour and shape words is not enough.

    Meant for tiny configs on the CPU: TINY_CLIP_CONFIG on 2000 64x64 pairs for 8 epochs is about
    30 s of one core. On a busy shared machine call `torch.set_num_threads(1)` first: OpenMP
    threads that lose their core spin at every barrier and can make a step 10x slower.
    The config is written to `out_dir/<model_name>.json` and registered with
    open_clip first, so the model is built by `create_model_and_transforms` like any other.
    Images go through the eval transform (no augmentation): random crops could cut shapes out of
    the picture and make captions false. Returns the trained judge; `ClipJudge.load(out_dir)`
    gives the same scores.
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images and {len(captions)} captions")
    if len(images) < 2:
        raise ValueError("contrastive training needs at least 2 image-caption pairs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{model_name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    open_clip.add_model_config(config_path)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), _quiet_random_init():  # open_clip's init draws from the global RNG
        torch.manual_seed(seed)
        judge = ClipJudge.from_pretrained(model_name)
    model = judge.model
    # Encode the whole set once: the transform is deterministic and the set fits in memory.
    pixels = torch.stack([judge.preprocess(im) for im in images])
    tokens = judge.tokenizer(list(captions))
    if hard_negatives is not None and len(hard_negatives) != len(captions):
        raise ValueError(f"got {len(hard_negatives)} hard negatives for {len(captions)} captions; give one each")
    negative_tokens = None if hard_negatives is None else judge.tokenizer(list(hard_negatives))

    # open_clip's training recipe: no weight decay on gains, biases and logit_scale (all < 2-D).
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True)
    steps_per_epoch = max(len(images) // batch_size, 1)  # drop the ragged last batch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    loss_fn = open_clip.ClipLoss()

    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="train clip judge", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            image_features, text_features, logit_scale = model(pixels[batch], tokens[batch])
            if negative_tokens is None:
                loss = loss_fn(image_features, text_features, logit_scale)
            else:
                negative_features = model.encode_text(negative_tokens[batch], normalize=True)
                loss = clip_loss_with_hard_negatives(image_features, text_features, negative_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # CLIP clamps the temperature at 100 (Radford et al. 2021, sec. 2.5)
                model.logit_scale.clamp_(0, math.log(100))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()

    weights = judge.save(out_dir)
    judge.name = f"{model_name}:{weights}"
    return judge
