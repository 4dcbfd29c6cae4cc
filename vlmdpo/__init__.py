"""vlmdpo: Direct Preference Optimization for vision-language models.

The library, by the path a training row takes:

- ``vlmdpo.data``: rows in any known layout, checked and decoded; the processor-aware collator.
- ``vlmdpo.model``: loading a VLM, LoRA on its parts, the reference (the adapter disabled), merging.
- ``vlmdpo.forward``: per-token log-probs of the response tokens only (the plain path and the packed fast path).
- ``vlmdpo.methods``: the training methods: DPO-family losses, mDPO's conditional term, dense DPO, BCO's shift.
- ``vlmdpo.train``: one step, the loop on ``accelerate``, checkpoints, the reference cache, iterative DPO.
- ``vlmdpo.eval``: hallucination and preference metrics, batch evaluation of checkpoints, reports.
- ``vlmdpo.tiny``: tiny random-weight models of the real ``transformers`` classes, for offline runs and tests.
- ``vlmdpo.config`` (typed run settings), ``vlmdpo.show`` (notebook figures), ``vlmdpo.cli`` (the command line),
  ``vlmdpo.names`` (``package.module:NAME`` settings), ``vlmdpo.done_marker`` (folders whose work finished).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

MOVED = {
    "vlmdpo.images": "vlmdpo.data.images",
    "vlmdpo.formats": "vlmdpo.data.formats",
    "vlmdpo.validate": "vlmdpo.data.validate",
    "vlmdpo.dataset_tools": "vlmdpo.data.tools",
    "vlmdpo.collator": "vlmdpo.data.collator",
    "vlmdpo.modeling": "vlmdpo.model",
    "vlmdpo.merge": "vlmdpo.model.merge",
    "vlmdpo.logps": "vlmdpo.forward.logps",
    "vlmdpo.fast_logps": "vlmdpo.forward.fast",
    "vlmdpo.packing": "vlmdpo.forward.packing",
    "vlmdpo.tree_attention": "vlmdpo.forward.tree_attention",
    "vlmdpo.lm_head": "vlmdpo.forward.lm_head",
    "vlmdpo.probes": "vlmdpo.forward.probes",
    "vlmdpo.losses": "vlmdpo.methods.losses",
    "vlmdpo.corrupt": "vlmdpo.methods.corrupt",
    "vlmdpo.dense_weights": "vlmdpo.methods.dense",
    "vlmdpo.method_batches": "vlmdpo.methods.collate",
    "vlmdpo.step": "vlmdpo.train.step",
    "vlmdpo.run_data": "vlmdpo.train.run_data",
    "vlmdpo.checkpoints": "vlmdpo.train.checkpoints",
    "vlmdpo.reference_cache": "vlmdpo.train.reference_cache",
    "vlmdpo.iterative": "vlmdpo.train.iterative",
    "vlmdpo.metrics_log": "vlmdpo.eval.metrics_log",
    "vlmdpo.judge": "vlmdpo.eval.judge",
    "vlmdpo.tiny_models": "vlmdpo.tiny",
    "vlmdpo.tiny_families": "vlmdpo.tiny.models",
    "vlmdpo.tiny_gemma_families": "vlmdpo.tiny.gemma",
    "vlmdpo.tiny_mrope_families": "vlmdpo.tiny.mrope",
    "vlmdpo.support": "vlmdpo.tiny.support",
}
"""Modules of the flat layout before the subpackages, and where each one's contents live now."""


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import vlmdpo.step`` (an old path) gives the module now at the new path, with a warning naming it."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}: import it from there", FutureWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModule())
