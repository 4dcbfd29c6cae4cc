"""The model: loading any ``AutoModelForImageTextToText`` checkpoint (or a ``tiny:<family>`` one) with its
processor, LoRA on the parts asked for, the reference (the adapter disabled, or a frozen copy), merging.

- ``load``: ``load_model_and_processor``, the families refused at load and why, the model's parts.
- ``lora``: the model's parts, ``apply_lora``, ``reference_mode``, ``frozen_copy``, ``eval_mode``.
- ``merge``: an adapter merged into its base, written as a standalone model.
"""

from vlmdpo.model.load import hf_model, load_model_and_processor, load_processor, resolve_model_path
from vlmdpo.model.lora import apply_lora, eval_mode, frozen_copy, linear_module_names, reference_mode
from vlmdpo.model.merge import merge_adapter

__all__ = ["apply_lora", "eval_mode", "frozen_copy", "hf_model", "linear_module_names", "load_model_and_processor",
           "load_processor", "merge_adapter", "reference_mode", "resolve_model_path"]
