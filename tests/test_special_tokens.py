"""Special tokens typed into a row's text, on every tested family's own tokens: the up-front check names the row,
field and token; ``special_tokens_in_text=literal`` trains a response on them as plain text; rows without
them are tokenized exactly as before, in either mode."""

import json

import datasets
import pytest
import torch
from PIL import Image

from vlmdpo.config import DataConfig, load_config
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.data.validate import validate_rows
from vlmdpo.model.load import load_processor
from vlmdpo.tiny.models import tiny_vlm
from vlmdpo.tiny.support import TESTED_FAMILIES
from vlmdpo.train.run_data import data_fingerprint, load_pairs, validate_training_data

PROMPT, CHOSEN, REJECTED = "<image>describe the image.", "a red square and a blue dog.", "a green circle."


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("special_tokens")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "red.png")
    return folder


@pytest.fixture(scope="module", params=list(TESTED_FAMILIES))
def processor(request, vlmdpo_cache):
    return load_processor(tiny_vlm(request.param))


def pairs_of(rows, image_root):
    raw = [{"images": ["red.png"], "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, **row} for row in rows]
    return PreferenceDataset(datasets.Dataset.from_list(raw), image_root=str(image_root))


def end_of_turn(collator, pairs) -> str:
    """The token this family's template closes a response with (the last one the completion mask covers)."""
    ids, mask = collator.encode_response(pairs[0], "chosen")
    return collator.tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask) if m][-1])


def typed_rows(eot: str, eos: str) -> list[dict]:
    return [{}, {"chosen": f"a red square{eot} and a blue dog."}, {"rejected": f"a green{eos} circle."},
            {"prompt": f"<image>describe{eot} the image."}]


def test_typed_special_tokens_are_named_with_row_field_and_token(processor, image_root):
    collator = PreferenceCollator(processor)
    eot, eos = end_of_turn(collator, pairs_of([{}], image_root)), collator.tokenizer.eos_token
    report = validate_rows(pairs_of(typed_rows(eot, eos), image_root), collator, progress=False)
    found = {entry["row"]: entry for entry in report.bad}
    assert {row: entry["field"] for row, entry in found.items()} == {1: "chosen", 2: "rejected", 3: "prompt"}
    for row, token in ((1, eot), (2, eos), (3, eot)):
        assert found[row]["kind"] == "special_token_in_text"
        assert repr(token) in found[row]["problem"]
        assert found[row]["message"].startswith(f"row {row} (counted from 0), field ")
    assert "special_tokens_in_text=literal" in found[1]["fix"] and "literal" in found[2]["fix"]
    assert "cannot be kept as plain text" in found[3]["fix"]


def test_literal_trains_the_typed_token_as_text(processor, image_root):
    collator = PreferenceCollator(processor, special_tokens_in_text="literal")
    pairs = pairs_of([{}], image_root)
    eot = end_of_turn(collator, pairs)
    eot_id = collator.tokenizer.convert_tokens_to_ids(eot)
    image_token = next(token for token, role in collator.special.roles.items() if role.startswith("the processor's"))
    text = f"a red square{eot} and{image_token} a blue dog."
    rows = [{}, {"chosen": text}, {"prompt": f"<image>describe{eot} the image."}]
    report = validate_rows(pairs_of(rows, image_root), collator, progress=False)
    assert [(entry["row"], entry["field"]) for entry in report.bad] == [(2, "prompt")]  # a prompt cannot be literal

    ids, mask = collator.encode_response(pairs_of(rows, image_root)[1], "chosen")
    covered = [token for token, keep in zip(ids, mask) if keep]
    assert covered[-1] == eot_id  # the template's own end of turn is still the control token
    assert not set(covered[:-1]) & collator.special.ids  # the typed ones are plain text
    decoded = collator.tokenizer.decode(covered, skip_special_tokens=False)
    assert decoded.lstrip() == text + eot  # the mask covers the response text (and the separator, if any)
    scaffold = collator.tokenizer.decode([t for t, keep in zip(ids, mask) if not keep], skip_special_tokens=False)
    assert "square" not in scaffold and "dog" not in scaffold


def test_rows_without_typed_tokens_are_tokenized_as_before(processor, image_root):
    pairs = pairs_of([{}, {"chosen": "no.", "rejected": "yes, a big dog."}], image_root)
    rows = [pairs[0], pairs[1]]
    error, literal = PreferenceCollator(processor), PreferenceCollator(processor, special_tokens_in_text="literal")
    before, after = error(rows), literal(rows)
    for key in ("prompt_input_ids", "chosen_input_ids", "chosen_completion_mask", "rejected_input_ids",
                "rejected_completion_mask"):
        assert torch.equal(before[key], after[key]), key
    # cut only at the template's own special tokens, the literal reading of an ordinary response is the plain one
    prompt_text = processor.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)
    suffix = full[len(prompt_text):]
    start = suffix.find(CHOSEN)
    ids, _ = literal.special.encode_literal(suffix, start, start + len(CHOSEN))
    assert ids == processor.tokenizer(suffix, add_special_tokens=False)["input_ids"]


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="special_tokens_in_text must be error or literal"):
        DataConfig(special_tokens_in_text="keep")


def test_validate_reads_the_setting_from_the_config(image_root, vlmdpo_cache, tmp_path):
    rows = [{"images": [str(image_root / "red.png")], "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, **row}
            for row in typed_rows("</s>", "</s>")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    found = {}
    for mode in ("error", "literal"):
        config = load_config(None, [f"model.name_or_path={tiny_vlm('llava')}", f"data.train={data}",
                                    f"train.output_dir={tmp_path / mode}", "data.allow_outside_images=true",
                                    f"data.special_tokens_in_text={mode}", "train.progress=false"])
        report, _ = validate_training_data(config)
        bad = {entry["row"]: entry["field"] for entry in report.bad}
        found[mode] = (bad, data_fingerprint(load_pairs(config), config))
    assert found["error"][0] == {1: "chosen", 2: "rejected", 3: "prompt"}
    assert found["literal"][0] == {3: "prompt"}
    assert found["error"][1] != found["literal"][1]  # literal tokenizes differently: another run's data


def test_train_reads_the_setting_and_trains_the_typed_token_as_text(image_root, vlmdpo_cache, tmp_path):
    """``vlmdpo train``: a response with ``</s>`` typed into it stops the run before step 1 by default, and with
    ``literal`` trains (the rows of this file that only literal lets through)."""
    from vlmdpo.train.loop import train

    rows = [{"images": [str(image_root / "red.png")], "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, **row}
            for row in typed_rows("</s>", "</s>")[:3]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def config(mode):
        return load_config(None, [f"model.name_or_path={tiny_vlm('llava')}", f"data.train={data}",
                                  f"train.output_dir={tmp_path / mode}", "data.allow_outside_images=true",
                                  f"data.special_tokens_in_text={mode}", "train.progress=false", "train.max_steps=1",
                                  "train.batch_size=3", "train.mixed_precision=no"])

    from vlmdpo.data.validate import BadRowsError

    with pytest.raises(BadRowsError, match=r"special_token_in_text: 2\). First: row 1 .*field 'chosen'.*'</s>'"):
        train(config("error"))
    train(config("literal"))
    logged = json.loads((tmp_path / "literal" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["step"] == 1 and torch.isfinite(torch.tensor(logged["loss"]))
