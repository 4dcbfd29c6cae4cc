"""CLIP judge: CLIPScore for image-caption pairs, built only on open_clip's own functions.

Used to rank candidate captions of an image, e.g. to build AI-feedback preference pairs (the
best-scored caption as chosen, the worst as rejected when their gap is above a margin).

A judge is either a released open_clip model (`ClipJudge.from_pretrained("ViT-B-32", "openai")`)
or a tiny model trained from scratch on synthetic data (`train_clip_judge`). Saved judges are a
directory holding an open_clip model config `<model_name>.json` and `open_clip_model.safetensors`;
`ClipJudge.load` registers the config with `open_clip.add_model_config` and builds the model with
`open_clip.create_model_and_transforms(model_name, pretrained=<weights file>)`, so plain open_clip
can load the same directory (also as "local-dir:<directory>").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image
from tqdm.auto import tqdm

WEIGHTS_NAME = "open_clip_model.safetensors"
HUB_CONFIG_NAME = "open_clip_config.json"  # what open_clip's "local-dir:" and hf-hub loaders read
CLIPSCORE_WEIGHT = 2.5  # w in CLIP-S = w * max(cos, 0), Hessel et al. 2021 (arXiv:2104.08718), eq. 1

# open_clip model config format (same keys as open_clip/model_configs/*.json). Sized for 64x64
# images of a few coloured shapes: 64 patches of 8x8, 2 ViT blocks, a 2-block text tower. The
# default SimpleTokenizer (its BPE vocab ships inside open_clip) gives vocab_size 49408.
TINY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_NAME = "vlmdpo-tiny-clip"


class ClipJudge:
    """An open_clip model with its eval transform and tokenizer, scoring images against captions.

    Attributes:
        model: the open_clip CLIP model, in eval mode.
        preprocess: open_clip's eval transform, PIL image -> (3, H, W) float tensor.
        tokenizer: open_clip tokenizer, list[str] -> (N, context_length) long tensor.
        name: model name and pretrained tag or weights path, e.g. "ViT-B-32:openai"; record it
            with any scores so results say which judge produced them.
        model_name: the open_clip model config name.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 model_name: str, model_config: dict, pretrained: str | None = None):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_config = model_config
        self.name = f"{model_name}:{pretrained}" if pretrained else model_name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = None,
                        device: str | torch.device = "cpu",
                        preprocess_cfg: dict | None = None) -> ClipJudge:
        """Build a judge from an open_clip model name and a hub tag or a local checkpoint path.

        Any name open_clip knows works: built-ins, configs added with `open_clip.add_model_config`,
        "hf-hub:org/repo" and "local-dir:/path" (the last two ignore `pretrained`). `pretrained=None`
        gives random weights. `preprocess_cfg` (mean, std, interpolation, resize_mode) overrides
        the image transform, e.g. to restore the one a saved judge was built with.
        """
        # Read the config now: open_clip's registry is global and a later add_model_config of the
        # same name would otherwise change what save() writes.
        model_config = open_clip.get_model_config(model_name)
        preprocess_cfg = preprocess_cfg or {}
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device,
            image_mean=preprocess_cfg.get("mean"), image_std=preprocess_cfg.get("std"),
            image_interpolation=preprocess_cfg.get("interpolation"),
            image_resize_mode=preprocess_cfg.get("resize_mode"))
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model, preprocess, tokenizer, model_name, model_config, pretrained)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ClipJudge:
        """Load a judge written by `save`: register its config with open_clip, then build from it."""
        directory = Path(directory)
        config_path = _find_model_config(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}; is it a ClipJudge.save directory?")
        hub_config = directory / HUB_CONFIG_NAME
        preprocess_cfg = None
        if hub_config.is_file():
            preprocess_cfg = json.loads(hub_config.read_text()).get("preprocess_cfg")
        # The json file, not the folder: registering the folder would also register any other json
        # lying there. A later add_model_config of the same name wins, so reloading is safe.
        open_clip.add_model_config(config_path)
        return cls.from_pretrained(config_path.stem, pretrained=str(weights), device=device,
                                   preprocess_cfg=preprocess_cfg)

    def save(self, directory: str | Path) -> Path:
        """Write the weights, the model config and the image transform; returns the weights path.

        `<model_name>.json` is an open_clip model config for `add_model_config`;
        `open_clip_config.json` holds it again with the transform (a SigLIP judge does not use
        CLIP's mean and std), in the format `open_clip.create_model("local-dir:<directory>")` reads.
        """
        from safetensors.torch import save_file

        if self.model_config is None:
            raise ValueError(f"no open_clip model config known for {self.model_name!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config_name = re.sub(r"[^\w.-]", "-", self.model_name)  # "hf-hub:org/repo" is not a file name
        for stale in directory.glob("*.json"):  # load() expects exactly one model config here
            if _is_model_config(stale) and stale.stem != config_name:
                stale.unlink()
        (directory / f"{config_name}.json").write_text(json.dumps(self.model_config, indent=2))
        preprocess_cfg = dict(self.model.visual.preprocess_cfg)
        (directory / HUB_CONFIG_NAME).write_text(
            json.dumps({"model_cfg": self.model_config, "preprocess_cfg": preprocess_cfg}, indent=2))
        state_dict = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state_dict, directory / WEIGHTS_NAME)
        return directory / WEIGHTS_NAME

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image embeddings, (N, embed_dim) float32 on the CPU."""
        out = []
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[i:i + batch_size]])
            out.append(self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def embed_texts(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised caption embeddings, (N, embed_dim) float32 on the CPU."""
        out = []
        for i in range(0, len(captions), batch_size):
            tokens = self.tokenizer(list(captions[i:i + batch_size]))
            out.append(self.model.encode_text(tokens.to(self.device), normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def score(self, images: Sequence[Image.Image], captions: Sequence[str],
              batch_size: int = 64) -> torch.Tensor:
        """CLIPScore of each (images[i], captions[i]) pair, (N,) in [0, 2.5].

        CLIP-S(c, v) = 2.5 * max(cos(E_c, E_v), 0) (Hessel et al. 2021, arXiv:2104.08718, eq. 1).
        The paper prefixes captions with "A photo depicts" for released CLIPs; pass that in
        `captions` if wanted, the judge adds nothing.
        """
        if len(images) != len(captions):
            raise ValueError(f"score needs one caption per image, got {len(images)} images "
                             f"and {len(captions)} captions")
        cosine = (self.embed_images(images, batch_size) * self.embed_texts(captions, batch_size)).sum(-1)
        return CLIPSCORE_WEIGHT * cosine.clamp(min=0)

    def scores_matrix(self, images: Sequence[Image.Image], captions: Sequence[str],
                      batch_size: int = 64) -> torch.Tensor:
        """CLIPScore of every image against every caption, (len(images), len(captions))."""
        cosine = self.embed_images(images, batch_size) @ self.embed_texts(captions, batch_size).T
        return CLIPSCORE_WEIGHT * cosine.clamp(min=0)

    def rank(self, image: Image.Image, candidates: Sequence[str]) -> list[int]:
        """Indices of `candidates`, best caption for `image` first.

        Sorted by cosine, not CLIPScore: the clamp at 0 would tie all captions with negative cosine.
        """
        cosine = self.embed_images([image]) @ self.embed_texts(candidates).T
        return cosine[0].argsort(descending=True, stable=True).tolist()


def _is_model_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg"))


def _find_model_config(directory: Path) -> Path:
    configs = [p for p in sorted(directory.glob("*.json")) if _is_model_config(p)]
    if len(configs) != 1:
        raise FileNotFoundError(f"expected one open_clip model config (*.json with embed_dim, vision_cfg, "
                                f"text_cfg) in {directory}, found {[p.name for p in configs]}")
    return configs[0]


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

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
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
