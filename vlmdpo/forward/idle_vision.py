"""Every forward runs the vision tower, images or not, when the model's parameters are sharded.

Under FSDP2 or DeepSpeed ZeRO-3 running a module all-gathers its parameters: a collective every process must
enter. A process whose micro-batch has no image would skip the vision tower's all-gathers while the others enter
them (gloo aborts on the mismatch, NCCL hangs; DeepSpeed #7170). ``run_vision_every_forward`` hooks the model so
that a forward which reaches the language model without having run the vision tower runs it there on a blank
image and adds ``0 * sum(features)`` to the language model's input embeddings: nothing to the loss, exactly zero
to every gradient, at the point of the forward where a batch with images runs it, so the collectives of every
process come in the same order, forward and backward.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmdpo.forward.logps import cast_floating, model_dtype
from vlmdpo.model.load import hf_model, image_features_fn
from vlmdpo.model.lora import part_of


def vision_tower(model) -> nn.Module:
    """The outermost module of the vision part (LLaVA's ``vision_tower``, Qwen2-VL's ``visual``)."""
    found = next((module for name, module in hf_model(model).named_modules() if part_of(name) == "vision"), None)
    if found is None:
        raise ValueError(f"{type(hf_model(model)).__name__} has no vision tower to run on text-only batches")
    return found


def _tensors(output):
    """Every tensor in ``output`` (a tensor, or a tuple, list or ``ModelOutput`` of them, nested)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (dict, tuple, list)):
        for value in output.values() if isinstance(output, dict) else output:
            yield from _tensors(value)


def _zero_of(output) -> torch.Tensor:
    """``0 * `` the sum of the floating-point tensors in ``output``: zero, with a (zero) gradient to all of them."""
    return torch.stack([t.float().sum() for t in _tensors(output) if t.is_floating_point()]).sum() * 0


def run_vision_every_forward(model, blank_image_inputs: dict[str, torch.Tensor]) -> list:
    """Hook ``model`` so that each forward runs its vision tower; return the hook handles.

    ``blank_image_inputs``: one image's ``vision_inputs`` (``PreferenceCollator.blank_image_inputs``), run through
    the model's own ``get_image_features`` when a forward has no image.
    """
    base = hf_model(model)
    tower, decoder = vision_tower(base), base.get_decoder()
    ran = {"vision": False}
    base.vlmdpo_images_seen = 0  # forwards with a real image since the optimizer last stepped (images_seen)

    def forward_starts(module, args):
        ran["vision"] = False

    def vision_ran(module, args, output):
        ran["vision"] = True
        base.vlmdpo_images_seen += 1

    def before_language_model(module, args, kwargs):
        if ran["vision"]:
            return None
        if kwargs.get("inputs_embeds") is None:
            raise ValueError(f"{type(base).__name__} calls its language model without inputs_embeds: a text-only "
                             "batch cannot run the vision tower beside it")
        device = kwargs["inputs_embeds"].device
        inputs = cast_floating({key: value.to(device) for key, value in blank_image_inputs.items()}, model_dtype(base))
        zero = _zero_of(image_features_fn(base)(**inputs, return_dict=True))
        base.vlmdpo_images_seen -= 1  # the blank image's run of the tower is not an image seen
        return args, {**kwargs, "inputs_embeds": kwargs["inputs_embeds"] + zero.to(kwargs["inputs_embeds"].dtype)}

    return [base.register_forward_pre_hook(forward_starts), tower.register_forward_hook(vision_ran),
            decoder.register_forward_pre_hook(before_language_model, with_kwargs=True)]


def take_images_seen(model) -> int:
    """Forwards of ``model`` that ran a real image since the last call (0 for a model without these hooks)."""
    base = hf_model(model)
    seen = getattr(base, "vlmdpo_images_seen", 0)
    if seen:
        base.vlmdpo_images_seen = 0
    return seen
