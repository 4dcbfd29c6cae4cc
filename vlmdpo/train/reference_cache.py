"""Reference log-probs computed once before training, in inference mode, and cached on disk.

The reference model never changes during DPO, so the reference pass of every step can be replaced by one pass
over the training pairs before the first step (TR-DPO, which moves it, refuses the cache: ``vlmdpo.methods.trdpo``).
Nothing here is specific to text (TRL refuses this for images): rows go through the training collator and the
training forward path, images included.

The cache file is named by a hash of everything the numbers depend on: the dataset's ``datasets``
fingerprint (which changes with its content and with any ``select``/``filter``), the reference weights
themselves (adapters excluded: the reference is the base), the processor (chat template, vocabulary, image
settings) and the settings that change the collated tensors or the arithmetic (length limits, dtype).
Change any of them and the key changes, so a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


def default_cache_dir() -> Path:
    """``$VLMDPO_CACHE/reference_logps`` (``~/.cache/vlmdpo`` by default), beside the tiny models' cache."""
    root = os.environ.get("VLMDPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vlmdpo"))
    return Path(root) / "reference_logps"


def weights_fingerprint(model) -> str:
    """Hash of the reference weights: every parameter and buffer except adapter (``lora_``) tensors."""
    digest = hashlib.blake2b(digest_size=16)
    module = getattr(model, "module", model)
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def processor_fingerprint(processor) -> str:
    """Hash of what the processor turns rows into tokens and pixels with."""
    tokenizer = getattr(processor, "tokenizer", processor)
    parts = {
        "chat_template": getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None),
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted(map(str, tokenizer.all_special_tokens)),
        "image_processor": getattr(getattr(processor, "image_processor", None), "to_dict", lambda: None)(),
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def cache_key(dataset_fingerprint: str, weights: str, processor: str, settings: dict) -> str:
    """File stem for one combination of data, reference weights, processor and settings."""
    text = json.dumps({"data": dataset_fingerprint, "weights": weights, "processor": processor,
                       "settings": settings}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class ReferenceLogps:
    """Reference log-probs of a dataset's pairs, by row index (the ``index`` the collator passes on)."""

    index: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor

    def lookup(self, indices: list[int], device=None) -> dict[str, torch.Tensor]:
        """``{"chosen_logps", "rejected_logps"}`` (B,) for the rows ``indices`` of a batch."""
        position = {int(i): p for p, i in enumerate(self.index.tolist())}
        missing = [i for i in indices if int(i) not in position]
        if missing:
            raise KeyError(f"no precomputed reference log-probs for rows {missing[:5]}")
        rows = torch.tensor([position[int(i)] for i in indices])
        return {"chosen_logps": self.chosen_logps[rows].to(device),
                "rejected_logps": self.rejected_logps[rows].to(device)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"index": self.index, "chosen_logps": self.chosen_logps,
                    "rejected_logps": self.rejected_logps}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceLogps:
        data = torch.load(path, weights_only=True)
        return cls(data["index"], data["chosen_logps"], data["rejected_logps"])


@torch.inference_mode()
def compute_reference_logps(reference_logps_fn, loader, progress: bool = False) -> ReferenceLogps:
    """Run ``reference_logps_fn(batch) -> {"chosen_logps", "rejected_logps"}`` over ``loader`` once."""
    from tqdm.auto import tqdm

    index, chosen, rejected = [], [], []
    for batch in tqdm(loader, desc="reference log-probs", disable=not progress, dynamic_ncols=True):
        out = reference_logps_fn(batch)
        index.extend(int(i) for i in batch["index"])
        chosen.append(out["chosen_logps"].float().cpu())
        rejected.append(out["rejected_logps"].float().cpu())
    return ReferenceLogps(torch.tensor(index, dtype=torch.long), torch.cat(chosen), torch.cat(rejected))


def load_or_compute(folder: Path, key: str, compute, log=print) -> ReferenceLogps:
    """The cached ``ReferenceLogps`` at ``folder / key``, else ``compute()`` saved there."""
    path = Path(folder) / f"{key}.pt"
    if path.exists():
        log(f"reference log-probs: loaded from {path}")
        return ReferenceLogps.load(path)
    result = compute()
    result.save(path)
    log(f"reference log-probs: computed for {len(result.index)} pairs, cached at {path}")
    return result
