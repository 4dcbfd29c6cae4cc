"""``vlmdpo.show``: the notebook figures and tables, on hand-made rows and records."""

import json

import pytest
from PIL import Image

from data_recipes.shapes import SHAPES_VOCABULARY
from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.show import (
    mark_hallucinations, markdown_table, read_eval, show_captions, show_pairs, training_figure, worst_hallucinations,
    wrong_pairs,
)

VOCABULARY = ObjectVocabulary.from_dict(SHAPES_VOCABULARY)


def messages(role, text, image=False):
    return [{"role": role, "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}]


def row(index, chosen="a red circle.", rejected="a blue square."):
    return {"index": index, "images": [Image.new("RGB", (16, 16), "red")], "objects": ["red circle"],
            "prompt": messages("user", "Describe the image.", image=True), "chosen": messages("assistant", chosen),
            "rejected": messages("assistant", rejected)}


def texts(figure):
    return [t.get_text() for axis in figure.axes for t in axis.texts] + [a.get_title() for a in figure.axes]


def test_mark_hallucinations_marks_only_claimed_objects_not_in_the_image():
    caption = "a red circle and a blue square. there is no green triangle."
    assert mark_hallucinations(caption, ["red circle"], VOCABULARY) == (
        "a red circle and a [[blue square]]. there is no green triangle.")
    assert mark_hallucinations(caption, ["red circle", "blue square"], VOCABULARY) == caption


def test_show_pairs_and_captions_draw_each_row_with_its_text():
    figure = show_pairs([row(0), row(1, chosen="a red circle, twice.")], count=2)
    shown = texts(figure)
    assert len([a for a in figure.axes if a.images]) == 2
    assert "chosen: a red circle, twice." in shown and any("in the image: red circle" in t for t in shown)
    records = [{"index": 0, "response": "a red circle and a blue square.", "hallucinated": ["blue square"]}]
    shown = texts(show_captions(records, [row(0)], VOCABULARY))
    assert "a red circle and a [[blue square]]." in shown and "not in the image: blue square" in shown


def test_training_figure_plots_training_and_held_out_values():
    records = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5}
               for s in (1, 2, 3)] + [{"step": 3, "eval/rewards/margins": 0.2}]
    figure = training_figure(records)
    loss, margins, _ = figure.axes
    assert list(loss.lines[0].get_ydata()) == pytest.approx([0.6, 0.5, 0.4])
    assert len(margins.lines) == 2 and list(margins.lines[1].get_xdata()) == [3]
    assert margins.get_xlabel() == "optimizer step" and "margin" in margins.get_ylabel()


def test_worst_hallucinations_and_wrong_pairs():
    records = [{"index": i, "response": "x", "hallucinated": ["a"] * n} for i, n in enumerate([1, 3, 0, 2])]
    assert [r["index"] for r in worst_hallucinations(records, count=2)] == [1, 3]
    per_pair = [{"index": i, "margin": m, "policy_chosen_logps": -1.0, "ref_chosen_logps": -2.0,
                 "policy_rejected_logps": -3.0, "ref_rejected_logps": -3.5} for i, m in enumerate([0.5, -0.2, 0.0, -1.0])]
    wrong = wrong_pairs({"preference": {"per_pair": per_pair}}, [row(i) for i in range(4)])
    assert [(w["index"], w["margin"]) for w in wrong] == [(3, -1.0), (1, -0.2), (2, 0.0)]
    assert wrong[0]["chosen"] == "a red circle." and wrong[0]["chosen_logp_change"] == 1.0
    assert wrong[0]["rejected_logp_change"] == 0.5


def test_markdown_table_and_read_eval(tmp_path):
    table = markdown_table([{"a": "x|y", "b": "word " * 30}], width=20)
    assert table.splitlines()[0] == "| a | b |" and "x\\|y" in table and "..." in table
    assert markdown_table([]) == "(none)"
    folder = tmp_path / "checkpoints" / "run--adapter"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"chair": {"chair_i": 0.5}}))
    (folder / "generations.jsonl").write_text(json.dumps({"index": 0, "response": "a"}) + "\n")
    (tmp_path / "checkpoints" / "unfinished").mkdir()
    assert read_eval(tmp_path) == {"run--adapter": {"result": {"chair": {"chair_i": 0.5}},
                                                     "generations": [{"index": 0, "response": "a"}]}}
