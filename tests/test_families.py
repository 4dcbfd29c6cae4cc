"""The family matrix: each tiny real-architecture family proven on the same checks, float32, CPU.

Per family: the completion mask covers exactly the response text (a batch with a system message, different
prompt lengths, two images in one row and a text-only row); causality (a later response token does not move
earlier log-probs, 1e-6); batch invariance (a row alone equals the row inside the padded batch, 1e-5); the fast
path equals the plain path (log-probs 1e-5, LoRA gradients 1e-4) or states why it refuses the family; a few
LoRA steps change only LoRA weights; batched generation equals one row at a time.
"""

import copy

import pytest
import torch
from PIL import Image

from helpers import assert_masks_cover_exactly_the_responses, randomize_lora
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import normalize_row
from vlmdpo.eval.generation import generate_responses
from vlmdpo.forward.fast import fast_completion_logps, fast_path_problem
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.tiny.models import tiny_vlm

from vlmdpo.tiny.support import NEEDS_AN_IMAGE_PER_BATCH, TESTED_FAMILIES, support_matrix_markdown

FAMILY_MATRIX = list(TESTED_FAMILIES)
EXPECTED_FAST_PATH = {family: reason for family, (_, reason) in TESTED_FAMILIES.items()}


def user(text, images=0, system=None):
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return messages + [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


def answer(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def matrix_rows():
    red, blue = Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (48, 32), (30, 30, 200))
    specs = [
        ([red], user("describe the image.", 1, system="answer briefly."), "a large red circle.", "a blue square."),
        ([red, blue], user("what is in the two pictures? answer the question with yes or no.", 2),
         "yes. a red circle and a blue square.", "no. a cat."),
        ([], user("is there a dog?"), "no.", "yes, a big dog."),
        ([blue], user("what colour?", 1), "blue.", "red and green."),
    ]
    rows = []
    for index, (images, prompt, chosen, rejected) in enumerate(specs):
        raw = {"images": images, "prompt": prompt, "chosen": answer(chosen), "rejected": answer(rejected)}
        rows.append({**normalize_row(raw, index), "index": index})
    return rows


@pytest.fixture(scope="module", params=FAMILY_MATRIX)
def built(request, vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm(request.param))
    model.requires_grad_(False)
    return request.param, model.eval(), processor


def test_completion_mask_covers_exactly_the_response_text(built):
    family, _, processor = built
    rows = matrix_rows()
    assert_masks_cover_exactly_the_responses(processor, PreferenceCollator(processor)(rows), rows, family)


def test_causality_later_tokens_do_not_move_earlier_logps(built):
    family, model, processor = built
    batch = PreferenceCollator(processor)(matrix_rows())
    pad = processor.tokenizer.pad_token_id
    before = completion_logps(model, batch, pad)["per_token_logps"]
    changed = {**batch, "chosen_input_ids": batch["chosen_input_ids"].clone()}
    for i in range(len(matrix_rows())):
        last = int(batch["chosen_completion_mask"][i].nonzero().max())
        plain_words = processor.tokenizer(" red green", add_special_tokens=False)["input_ids"]  # never an image token
        original = int(changed["chosen_input_ids"][i, last])
        changed["chosen_input_ids"][i, last] = next(t for t in plain_words if t != original)
        after = completion_logps(model, changed, pad)["per_token_logps"]
        torch.testing.assert_close(after[i, :last], before[i, :last], rtol=0, atol=1e-6, msg=family)


def test_each_row_alone_equals_the_row_in_the_batch(built):
    family, model, processor = built
    rows, collator, pad = matrix_rows(), PreferenceCollator(processor), processor.tokenizer.pad_token_id
    together = completion_logps(model, collator(rows), pad)
    for i, row in enumerate(rows):
        if not row["images"] and family in NEEDS_AN_IMAGE_PER_BATCH:
            continue
        alone = completion_logps(model, collator([row]), pad)
        for key in ("chosen_logps", "rejected_logps"):
            torch.testing.assert_close(alone[key][0], together[key][i], rtol=1e-5, atol=1e-5, msg=f"{family} {key}")


def test_fast_path_equals_plain_or_states_why_not(built):
    family, model, processor = built
    policy = randomize_lora(apply_lora(copy.deepcopy(model), r=4, alpha=8, parts=("language",)), seed=1)
    batch = PreferenceCollator(processor)(matrix_rows())
    problem = fast_path_problem(policy, batch)
    expected = EXPECTED_FAST_PATH[family]
    if expected is not None:
        assert problem is not None and problem.startswith(expected), problem
        return
    assert problem is None, problem
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    plain = completion_logps(policy, batch, processor.tokenizer.pad_token_id)
    plain_loss = (plain["chosen_logps"] - plain["rejected_logps"]).sum()
    plain_grads = torch.autograd.grad(plain_loss, lora)
    fast = fast_completion_logps(policy, batch)
    fast_loss = (fast["chosen_logps"] - fast["rejected_logps"]).sum()
    fast_grads = torch.autograd.grad(fast_loss, lora)
    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(fast_grads, plain_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_lora_training_steps_change_only_lora_and_generation_is_batch_invariant(built, tmp_path):
    from vlmdpo.config import LossConfig
    from vlmdpo.train.step import dpo_step

    family, model, processor = built
    model = copy.deepcopy(model)
    base_state = {n: v.clone() for n, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global RNG: the same adapter in any order
        torch.manual_seed(0)
        policy = apply_lora(model, r=4, alpha=8, parts=("language",))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    initial = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = PreferenceCollator(processor)(matrix_rows())
    policy.train()
    for _ in range(3):
        loss, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=processor.tokenizer.pad_token_id,
                           forward_path="plain")
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    for name, param in policy.named_parameters():
        if name in initial:
            assert not torch.equal(param, initial[name]), f"{family}: {name} did not train"
    with torch.no_grad():
        for name, value in policy.get_base_model().state_dict().items():
            clean = name.replace(".base_layer", "")
            if "lora_" not in name and clean in base_state:
                assert torch.equal(value, base_state[clean]), f"{family}: base weight {name} changed"
    rows = matrix_rows()
    together = generate_responses(policy, processor, rows, max_new_tokens=6, batch_size=len(rows), progress=False)
    alone = [generate_responses(policy, processor, [row], max_new_tokens=6, batch_size=1, progress=False)[0]
             if row["images"] or family not in NEEDS_AN_IMAGE_PER_BATCH else text for row, text in zip(rows, together)]
    assert together == alone, family


def test_the_classes_are_the_ones_claimed(built):
    family, model, _ = built
    assert type(model).__name__ == TESTED_FAMILIES[family][0]


def test_the_readme_support_matrix_is_rendered_from_the_tested_families():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert support_matrix_markdown() in readme, "regenerate with python -c 'from vlmdpo.tiny.support import *; " \
        "print(support_matrix_markdown())'"
