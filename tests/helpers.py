"""Helpers shared by several test modules (rows in several shapes, a LoRA policy that differs from its
reference). Random draws come from local generators, never from the global RNG."""

import math

import torch

from vlmdpo.data.rows import normalize_row
from vlmdpo.model.lora import apply_lora


def rows_from(images, specs):
    rows = []
    for index, (names, prompt, chosen, rejected) in enumerate(specs):
        raw = {"images": [images[n] for n in names], "prompt": prompt, "chosen": chosen, "rejected": rejected}
        rows.append({**normalize_row(raw, index), "index": index})
    return rows


SHORT = ([], "is there a dog?", "no.", "yes.")
ONE_IMAGE = (["square"], "describe the image.", "a large red circle.", "a small blue square.")
LONGER = [  # longer prompts, more and larger images, longer responses
    (["wide", "tall"], "what is in the picture? answer the question with yes or no, then describe the image.",
     "yes. a large red circle, a small blue square and a green triangle.",
     "no. the image shows a cat sitting on a table next to a cup of coffee."),
    (["tall", "square", "tiny"], "describe the image. what is in the picture?",
     "a man rides a bicycle down the street.", "a train at the station."),
]


def randomize_lora(policy, seed: int = 0, scale: float = 0.05):
    """Overwrite every LoRA matrix (A and B) with draws from a local generator: peft draws ``lora_A`` from
    the global RNG and starts ``lora_B`` at zero, so without this the adapter would do nothing and its
    weights would depend on whatever ran before."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(policy.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return policy


def lora_policy(model, parts=("language",), seed=0, r=4, alpha=8):
    """A LoRA-wrapped ``model`` in train mode whose adapter moves it off the reference by a seeded amount."""
    return randomize_lora(apply_lora(model, r=r, alpha=alpha, parts=parts), seed).train()


def assert_fast_path_equals_plain(policy, batch, pad_token_id, grad_scale=None):
    """Fast path against plain path on ``batch``: summed log-probs to 1e-5, LoRA gradients of the DPO margin
    to 1e-4 (relative to the largest gradient, at least 1, when ``grad_scale="relative"``)."""
    from vlmdpo.forward.fast import fast_completion_logps
    from vlmdpo.forward.logps import completion_logps

    lora = [p.requires_grad_(True) for n, p in policy.named_parameters() if "lora_" in n]
    plain = completion_logps(policy, batch, pad_token_id)
    fast = fast_completion_logps(policy, batch)
    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5)
    plain_grads = torch.autograd.grad((plain["chosen_logps"] - plain["rejected_logps"]).sum(), lora)
    fast_grads = torch.autograd.grad((fast["chosen_logps"] - fast["rejected_logps"]).sum(), lora)
    for ours, theirs in zip(fast_grads, plain_grads):
        scale = theirs.abs().max().clamp(min=1.0) if grad_scale == "relative" else 1.0
        torch.testing.assert_close(ours / scale, theirs / scale, rtol=1e-4, atol=1e-4)
    return plain


# hand-worked loss inputs (tests/test_losses.py, tests/test_fdivergence.py)

LN2, LN3, LN4_3, LN4 = math.log(2), math.log(3), math.log(4 / 3), math.log(4)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def equal_policy_and_ref(batch=3):
    """pi == ref for every response, so every log-ratio and h are 0."""
    logps = t(-5.0, -12.0, -7.5)[:batch]
    return logps, logps - 1.0, logps.clone(), logps - 1.0


def chosen_ratio_ln3():
    """chosen_logratio = ln 3, rejected_logratio = 0, so h = ln 3 (with beta = 1, beta*h = ln 3)."""
    return t(-1.0), t(-2.0), t(-1.0 - LN3), t(-2.0)


def check(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def assert_masks_cover_exactly_the_responses(processor, batch: dict, rows: list[dict], family: str) -> None:
    """Each row's completion mask covers its response text, then the end-of-turn token the template closes it
    with, and nothing else (chosen and rejected)."""
    tokenizer = processor.tokenizer
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(
        tokenizer.all_special_tokens)
    for field in ("chosen", "rejected"):
        for i, row in enumerate(rows):
            ids, mask = batch[f"{field}_input_ids"][i], batch[f"{field}_completion_mask"][i].bool()
            covered = tokenizer.decode(ids[mask], skip_special_tokens=False)
            text = row[field][0]["content"][0]["text"]
            assert covered.startswith(text) or covered.lstrip().startswith(text), (family, covered)
            rest = covered[covered.index(text) + len(text):]
            assert rest in special, (family, rest)
