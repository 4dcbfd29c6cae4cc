"""CLIP judge: CLIPScore for image-caption pairs, built only on open_clip's own functions.

Used to rank candidate captions of an image, e.g. to build AI-feedback preference pairs (the
best-scored caption as chosen, the worst as rejected when their gap is above a margin).

A judge is any open_clip model: a released one (`ClipJudge.from_pretrained("ViT-B-32", "openai")`), or
one trained from scratch (the shapes world's, `data_recipes.shapes.judge.train_clip_judge`). Saved judges are a
directory holding an open_clip model config `<model_name>.json` and `open_clip_model.safetensors`;
`ClipJudge.load` registers the config with `open_clip.add_model_config` and builds the model with
`open_clip.create_model_and_transforms(model_name, pretrained=<weights file>)`, so plain open_clip
can load the same directory (also as "local-dir:<directory>").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image

WEIGHTS_NAME = "open_clip_model.safetensors"
HUB_CONFIG_NAME = "open_clip_config.json"  # what open_clip's "local-dir:" and hf-hub loaders read
CLIPSCORE_WEIGHT = 2.5  # w in CLIP-S = w * max(cos, 0), Hessel et al. 2021 (arXiv:2104.08718), eq. 1

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
