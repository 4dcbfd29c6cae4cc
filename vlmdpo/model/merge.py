"""Fold a LoRA adapter into its base model and write a standalone checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


def merge_adapter(adapter_dir: str, output_dir: str, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``base`` (default: the adapter's recorded base model) plus the adapter, merge, and save.

    The result, with the processor, loads with ``AutoModelForImageTextToText.from_pretrained(output_dir)``
    and needs no ``peft``.
    """
    from peft import PeftModel

    from vlmdpo.model.load import load_model_and_processor

    adapter_config = Path(adapter_dir) / "adapter_config.json"
    if not adapter_config.exists():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json; point to a folder written by "
                                "`vlmdpo train` (its output_dir or a checkpoint-N/adapter folder)")
    base = base or json.loads(adapter_config.read_text())["base_model_name_or_path"]
    model, processor = load_model_and_processor(base, dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    output = Path(output_dir)
    merged.save_pretrained(output)
    processor.save_pretrained(output)
    return output
