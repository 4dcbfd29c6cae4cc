"""Evaluation rows from a data file with a column mapping, and the vocabulary choices."""

import json

import pytest
from PIL import Image

from vlmdpo.eval.rows import load_eval_rows, load_vocabulary


@pytest.fixture()
def jsonl(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"picture": "a.png", "things": ["dog", "puppy"]},
            {"picture": "a.png", "things": [], "question": "What is this?", "good": "red", "bad": "blue"}]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_from_a_jsonl_file_with_renamed_columns(jsonl):
    rows = load_eval_rows(str(jsonl), "test", images_column="picture", prompt_column="question",
                          objects_column="things", chosen_column="good", rejected_column="bad",
                          default_prompt="Describe the image.")
    first, second = rows
    assert first["index"] == 0 and first["objects"] == ["dog", "puppy"]
    assert first["images"][0].size == (8, 8)  # relative path resolved against the file's folder
    assert first["prompt"] == [{"role": "user", "content": [{"type": "image"},
                                                            {"type": "text", "text": "Describe the image."}]}]
    assert "chosen" not in first  # no pair in this row
    assert second["prompt"][0]["content"][1]["text"] == "What is this?"
    assert second["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    assert load_eval_rows(str(jsonl), max_rows=1, images_column="picture", default_prompt="x")[0]["index"] == 0


def test_a_row_without_prompt_needs_a_default(jsonl):
    with pytest.raises(ValueError, match="generation.prompt"):
        load_eval_rows(str(jsonl), images_column="picture", default_prompt=None)


def test_vocabularies(tmp_path):
    assert "dog" in load_vocabulary("coco").names
    assert load_vocabulary("data_recipes.shapes:SHAPES_VOCABULARY").canonical("red circles") == "red circle"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"widget": ["gadget"]}))
    assert load_vocabulary(str(path)).canonical("gadgets") == "widget"
    with pytest.raises(ValueError, match="neither coco, an existing json file"):
        load_vocabulary("imagenet")
    with pytest.raises(ValueError, match="cannot import NOPE from data_recipes.shapes"):
        load_vocabulary("data_recipes.shapes:NOPE")
