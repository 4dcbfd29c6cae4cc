"""Batched generation for evaluation: left-padded prompts through ``model.generate`` with the KV cache.

Prompts are encoded by the same processor path as training (``PreferenceCollator.encode_prompts``), so the
image placeholders expand exactly as they did during DPO; only the newly generated tokens are decoded.

Three speed settings, all off by default so that the default outputs stay those of plain batching:
``sort_by_length`` (batches of similar prompt lengths: less padding), ``cache_implementation="static"`` (a
preallocated KV cache) and ``compile`` (``torch.compile`` of the decoding step, on a static cache). Any of them
can change greedy outputs in the last float bits (a different padding layout or cache length changes the order
of float sums), and so, rarely, a token where two candidates nearly tie; ``benchmarks/bench_generation.py``
measures what each buys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import CompileConfig

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.image_groups import batches_by_image_count
from vlmdpo.forward.logps import cast_floating, model_dtype
from vlmdpo.model.lora import eval_mode
from vlmdpo.model.routers import generation_settings

CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")
"""KV caches ``generate_responses`` offers: the model's default (``None``), ``transformers``' dynamic cache, or
its static cache (preallocated, the one ``torch.compile`` can compile)."""


def with_prompt(row: dict, text: str) -> dict:
    """A copy of ``row`` whose prompt is one user turn: an image block per image, a video block per video, then
    ``text``."""
    content = [{"type": "image"} for _ in row["images"]] + [{"type": "video"} for _ in row.get("videos", ())] + [
        {"type": "text", "text": text}]
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


def _cache_kwargs(cache_implementation: str | None, compile: bool) -> dict:
    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {cache_implementation!r}")
    if compile and cache_implementation != "static":
        raise ValueError("compile=True needs cache_implementation='static' (torch.compile needs fixed cache shapes)")
    if cache_implementation is None:
        return {}
    if cache_implementation == "dynamic":
        return {"cache_implementation": "dynamic"}
    if not compile:  # transformers compiles by itself on a static cache on accelerators: keep that a setting
        return {"cache_implementation": "static", "disable_compile": True}
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # without it, transformers compiles on accelerators only
    return {"cache_implementation": "static", "compile_config": compile_config}


def prompt_lengths(processor, rows: Sequence[dict], batch_size: int = 16) -> list[int]:
    """Prompt tokens of each row, image tokens included, as ``generate_responses`` encodes them (the
    processor runs over ``batch_size`` rows at a time)."""
    collator = PreferenceCollator(processor)
    lengths: list[int] = []
    for start in range(0, len(rows), batch_size):
        lengths += collator.encode_prompts(list(rows[start: start + batch_size]))["attention_mask"].sum(1).tolist()
    return lengths


def length_order(lengths: Sequence[int]) -> list[int]:
    """Row indices longest prompt first; rows of equal length keep their order, so equal-length rows are
    batched exactly as without sorting. Longest first: a batch that does not fit in memory fails at once."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


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
    sort_by_length: bool = False,
    cache_implementation: str | None = None,
    compile: bool = False,
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
        sort_by_length: batch the rows longest prompt first (``length_order``), which cuts padding when prompt
            lengths differ; responses still come back in row order. The lengths cost one more processor pass.
            Greedy outputs can differ from unsorted ones in the last float bits (another padding layout), and
            samples differ (the random draws go to other rows); with equal prompt lengths nothing changes.
        cache_implementation: ``None`` (the model's default, a dynamic cache), ``"dynamic"`` or ``"static"``
            (preallocated for a batch's prompt plus ``max_new_tokens``, or the longest an earlier call on this
            model needed: no faster by itself on a CPU, it is what ``compile`` needs). Greedy outputs can differ
            from the dynamic cache's in the last float bits.
        compile: ``torch.compile`` the decoding step (needs ``cache_implementation="static"``; the first calls
            pay the compilation, tens of seconds on a CPU, where it pays only for small models: see
            ``benchmarks/bench_generation.py``).
        progress: show a progress bar over batches.

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
                    pad_token_id=tokenizer.pad_token_id, **_sampling_kwargs(do_sample, temperature, top_p),
                    **_cache_kwargs(cache_implementation, compile), **generation_settings(inner))
    order = length_order(prompt_lengths(processor, rows, batch_size)) if sort_by_length else range(len(rows))
    batches = batches_by_image_count(collator, rows, [list(order[start: start + batch_size])
                                                      for start in range(0, len(rows), batch_size)])
    n = num_return_sequences
    by_row: list = [None] * len(rows)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), torch.inference_mode():
        torch.manual_seed(seed)
        for batch in tqdm(batches, desc="generate", disable=not progress, leave=False, dynamic_ncols=True):
            inputs = cast_floating(dict(collator.encode_prompts([rows[i] for i in batch]).to(device)), dtype)
            output = inner.generate(**inputs, **settings)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            texts = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            for k, i in enumerate(batch):
                by_row[i] = texts[k * n: (k + 1) * n] if n > 1 else texts[k]
    return by_row
