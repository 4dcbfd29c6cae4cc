"""Batched generation for evaluation: left-padded prompts through ``model.generate`` with the KV cache.

Prompts are encoded by the same processor path as training (``PreferenceCollator.encode_prompts``), so the
image placeholders expand exactly as they did during DPO; only the newly generated tokens are decoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.logps import cast_floating, model_dtype
from vlmdpo.model.lora import eval_mode


def with_prompt(row: dict, text: str) -> dict:
    """A copy of ``row`` whose prompt is one user turn: an image block per image, then ``text``."""
    content = [{"type": "image"} for _ in row["images"]] + [{"type": "text", "text": text}]
    return {**row, "prompt": [{"role": "user", "content": content}]}


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / accelerate wrapper; generate lives on the inner model


def _sampling_kwargs(do_sample: bool, temperature: float, top_p: float) -> dict:
    # temperature / top_p next to do_sample=False make transformers warn, so pass them only when sampling
    if not do_sample:
        return {"do_sample": False}
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def generate_responses(
    model,
    processor,
    rows: Sequence[dict],
    *,
    prompt: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> list[str] | list[list[str]]:
    """Generate one response (or ``num_return_sequences``) per row, in row order.

    Args:
        model: an ``AutoModelForImageTextToText`` model, a ``peft`` model around one, or either wrapped by
            DDP/accelerate. Its train/eval mode is restored afterwards.
        processor: the model's ``AutoProcessor``.
        rows: normalized rows (``vlmdpo.data.rows.normalize_row``): ``images`` (PIL images) and ``prompt``
            (conversational messages). Other keys are ignored.
        prompt: if given, replaces every row's prompt by one user turn with the row's images and this text.
        max_new_tokens: generation budget per response.
        batch_size: rows per ``generate`` call.
        do_sample, temperature, top_p: greedy decoding by default; sampling settings otherwise.
        num_return_sequences: responses per row; with more than one, a list of lists is returned.
        seed: seeds sampling. The caller's RNG state is restored afterwards, so evaluating inside a
            training loop does not change its shuffling or dropout.

    Returns:
        The decoded new tokens of each response, special tokens skipped, whitespace stripped.
    """
    if batch_size < 1 or num_return_sequences < 1 or max_new_tokens < 1:
        raise ValueError("batch_size, num_return_sequences and max_new_tokens must all be >= 1")
    if num_return_sequences > 1 and not do_sample:
        raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy decoding repeats itself)")
    rows = [with_prompt(row, prompt) for row in rows] if prompt is not None else list(rows)
    collator = PreferenceCollator(processor)
    tokenizer = collator.tokenizer
    inner = _unwrap(model)
    device, dtype = next(inner.parameters()).device, model_dtype(inner)
    settings = dict(max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences, use_cache=True,
                    pad_token_id=tokenizer.pad_token_id, **_sampling_kwargs(do_sample, temperature, top_p))
    responses: list[str] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), torch.inference_mode():
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(rows), batch_size), desc="generate", disable=not progress,
                          leave=False, dynamic_ncols=True):
            inputs = cast_floating(dict(collator.encode_prompts(rows[start: start + batch_size]).to(device)), dtype)
            output = inner.generate(**inputs, **settings)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            responses.extend(text.strip() for text in texts)
    if num_return_sequences == 1:
        return responses
    n = num_return_sequences
    return [responses[i: i + n] for i in range(0, len(responses), n)]
