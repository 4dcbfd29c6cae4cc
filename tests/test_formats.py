"""Public datasets' and other toolkits' layouts: a fixture per format, written here in the published column
layout, is recognised by ``data.format=auto``, read into rows the collator accepts, and trains one step."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmdpo.config import load_config
from vlmdpo.data.rows import DataError, PreferenceDataset
from vlmdpo.data.formats import FormatError, apply_format, detect_format, known_formats
from vlmdpo.eval.metrics_log import read_metrics
from vlmdpo.train.run_data import load_pairs
from vlmdpo.train.loop import train

QUESTION = "What is in the picture?"
CHOSEN, REJECTED = "A red square on white.", "A blue dog on a bench."
COLOURS = ["red", "green", "blue", "yellow"]


def image(i):
    return Image.new("RGB", (24, 24), COLOURS[i % 4])


def save_images(folder, count, sub="images"):
    (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image(i).save(folder / sub / f"{i}.png")
    return [f"{sub}/{i}.png" for i in range(count)]


def write_json(path, rows, lines=False):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows, indent=1))
    return path


def with_images(rows, column, many=False):
    features = datasets.List(datasets.Image()) if many else datasets.Image()
    return datasets.Dataset.from_list(rows).cast_column(column, features)


def rlaif_v(folder):  # parquet with an Image feature, as on the hub
    rows = [{"ds_name": "vqav2", "image": image(i), "question": f"{QUESTION} ({i})", "chosen": CHOSEN,
             "rejected": f"{REJECTED} {i}", "origin_dataset": "vqav2", "origin_split": "train", "idx": i,
             "image_path": f"vqav2/{i}.jpg"} for i in range(4)]
    path = folder / "rlaif_v.parquet"
    with_images(rows, "image").to_parquet(str(path))
    return path


def trl_rlaif_v(folder):  # TRL's formatted copy: messages and an images list
    rows = [{"images": [image(i)], "prompt": [{"role": "user", "content": [
        {"type": "image", "text": None}, {"type": "text", "text": QUESTION}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "image", "text": None}][:0] + [
            {"type": "text", "text": CHOSEN}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": f"{REJECTED} {i}"}]}]}
        for i in range(4)]
    path = folder / "trl"
    with_images(rows, "images", many=True).save_to_disk(str(path))
    return path


def trl_string_content(folder):  # TRL messages whose content is a string, images in the row
    rows = [{"images": [image(i)], "prompt": [{"role": "user", "content": QUESTION}],
             "chosen": [{"role": "assistant", "content": CHOSEN}],
             "rejected": [{"role": "assistant", "content": f"{REJECTED} {i}"}]} for i in range(4)]
    path = folder / "trl_strings"
    with_images(rows, "images", many=True).save_to_disk(str(path))
    return path


def mmpr(folder):  # jsonl with image paths and <image> in the question
    paths = save_images(folder, 4)
    return write_json(folder / "mmpr.jsonl", [{"image": p, "question": f"<image>\n{QUESTION}", "chosen": CHOSEN,
                                               "rejected": f"{REJECTED} {i}"} for i, p in enumerate(paths)], lines=True)


def rlhf_v(folder):
    rows = [{"ds_name": "RLHF-V", "image": image(i), "text": json.dumps(
        {"question": QUESTION, "chosen": CHOSEN, "rejected": f"{REJECTED} {i}"}), "origin_dataset": "coco",
        "origin_split": "train", "idx": i, "image_path": f"{i}.jpg"} for i in range(4)]
    path = folder / "rlhf_v.parquet"
    with_images(rows, "image").to_parquet(str(path))
    return path


def vlfeedback(folder):
    paths = save_images(folder, 3)

    def completion(model, rating, text, faithful=None):
        faithful = rating if faithful is None else faithful
        return {"model": model, "response": text, "annotations": {
            "Helpfulness": {"Rating": str(rating), "Rationale": "r"},
            "Ethical Considerations": {"Rating": "5", "Rationale": "r"},
            "Visual Faithfulness": {"Rating": str(faithful), "Rationale": "r"}}}

    rows = [
        {"id": "a", "prompt": QUESTION, "img_path": paths[0], "models": ["m1", "m2", "m3"], "completions": [
            completion("m1", 5, "best answer."), completion("m2", 2, "worst answer."), completion("m3", 4, "ok.")]},
        {"id": "b", "prompt": QUESTION, "img_path": paths[1], "models": ["m1", "m2"], "completions": [
            completion("m1", 3, "same a."), completion("m2", 3, "same b.")]},  # no margin: no pair
        {"id": "c", "prompt": QUESTION, "img_path": paths[2], "models": ["m1", "m2", "m3"], "completions": [
            completion("m1", 4, "good."), completion("m2", 1, "bad."), completion("m3", "N/A", "unrated.")]},
    ]
    return write_json(folder / "vlfeedback.jsonl", rows, lines=True)


def povid(folder):
    paths = save_images(folder, 4)
    return write_json(folder / "povid.json", [{
        "id": i, "image": p,
        "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": CHOSEN}],
        "rejected_conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"},
                                   {"from": "gpt", "value": f"{REJECTED} {i}"}]} for i, p in enumerate(paths)])


def llava_rlhf(folder):
    paths = save_images(folder, 4)
    return write_json(folder / "llava_rlhf.json", [{
        "id": str(i), "image": p, "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}],
        "output_1": {"from": "llava", "value": CHOSEN if i % 2 else f"{REJECTED} {i}"},
        "output_2": {"from": "llava", "value": f"{REJECTED} {i}" if i % 2 else CHOSEN},
        "preference": 1 if i % 2 else 2, "hallucination": 0} for i, p in enumerate(paths)])


def ha_dpo(folder):
    (folder / "vg").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        image(i).save(folder / "vg" / f"{2371750 + i}.jpg")
    return write_json(folder / "ha_dpo.json", [{"image_id": 2371750 + i, "question": QUESTION, "chosen": CHOSEN,
                                                "rejected": f"{REJECTED} {i}"} for i in range(4)])


def mdpo(folder):
    paths = save_images(folder, 4)
    template = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the user's questions. USER: <image>\n{q} ASSISTANT:")
    return write_json(folder / "mdpo.json", [{"img_path": p, "prompt": template.format(q=QUESTION), "chosen": CHOSEN,
                                              "rejected": f"{REJECTED} {i}"} for i, p in enumerate(paths)])


def llamafactory(folder):
    paths = save_images(folder, 4)
    return write_json(folder / "llamafactory.json", [{
        "conversations": [{"from": "human", "value": f"<image>{QUESTION}"}],
        "chosen": {"from": "gpt", "value": CHOSEN}, "rejected": {"from": "gpt", "value": f"{REJECTED} {i}"},
        "images": [p]} for i, p in enumerate(paths)])


def llamafactory_messages(folder):
    paths = save_images(folder, 4)
    return write_json(folder / "llamafactory_messages.json", [{
        "messages": [{"role": "user", "content": f"<image>{QUESTION}"}],
        "chosen": {"role": "assistant", "content": CHOSEN},
        "rejected": {"role": "assistant", "content": f"{REJECTED} {i}"}, "images": [p]} for i, p in enumerate(paths)])


def swift(folder):
    paths = save_images(folder, 4)
    return write_json(folder / "swift.jsonl", [{
        "messages": [{"role": "system", "content": "You are helpful."},
                     {"role": "user", "content": f"<image>{QUESTION}"}, {"role": "assistant", "content": CHOSEN}],
        "rejected_response": f"{REJECTED} {i}", "images": [p]} for i, p in enumerate(paths)], lines=True)


FIXTURES = {  # fixture -> (format auto-detection must choose, options, rows expected)
    "rlaif_v": (rlaif_v, "rlaif_v", {}, 4), "trl_rlaif_v": (trl_rlaif_v, "trl", {}, 4),
    "trl_string_content": (trl_string_content, "trl", {}, 4), "mmpr": (mmpr, "rlaif_v", {}, 4),
    "rlhf_v": (rlhf_v, "rlhf_v", {}, 4), "vlfeedback": (vlfeedback, "vlfeedback", {}, 2),
    "povid": (povid, "povid", {}, 4), "llava_rlhf": (llava_rlhf, "llava_rlhf", {}, 4),
    "ha_dpo": (ha_dpo, "ha_dpo", {"image_pattern": "vg/{image_id}.jpg"}, 4), "mdpo": (mdpo, "mdpo", {}, 4),
    "llamafactory": (llamafactory, "llamafactory", {}, 4),
    "llamafactory_messages": (llamafactory_messages, "llamafactory_messages", {}, 4), "swift": (swift, "swift", {}, 4),
}


def options_overrides(options):
    return [f"data.format_options.{key}={value}" for key, value in options.items()]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_format_is_detected_and_reads_rows_the_collator_accepts(name, tmp_path, tiny_model_and_processor):
    from vlmdpo.data.collator import PreferenceCollator

    writer, expected, options, count = FIXTURES[name]
    path = writer(tmp_path)
    logged = []
    pairs = load_pairs(load_config(None, [f"data.train={path}", *options_overrides(options)]), log=logged.append)
    assert f"data format: {expected} (" in logged[0]
    assert len(pairs) == count
    rows = [pairs[i] for i in range(len(pairs))]
    for row in rows:
        assert [im.size for im in row["images"]] == [(24, 24)]
        assert [b["type"] for m in row["prompt"] for b in m["content"]].count("image") == 1
        text = "".join(b.get("text", "") for m in row["prompt"] for b in m["content"])
        assert QUESTION in text and "<image>" not in text and "USER:" not in text
    batch = PreferenceCollator(tiny_model_and_processor[1])(rows)
    assert batch["chosen_completion_mask"].sum() > 0 and "pixel_values" in batch["vision_inputs"]
    if name not in ("vlfeedback",):
        assert {r["chosen"][0]["content"][0]["text"] for r in rows} == {CHOSEN}
        assert all(r["rejected"][0]["content"][0]["text"].startswith(REJECTED) for r in rows)


def test_vlfeedback_pairs_by_margin_on_the_chosen_aspect(tmp_path):
    path = vlfeedback(tmp_path)
    logged = []
    pairs = load_pairs(load_config(None, [f"data.train={path}"]), log=logged.append)
    texts = [(pairs[i]["chosen"][0]["content"][0]["text"], pairs[i]["rejected"][0]["content"][0]["text"])
             for i in range(len(pairs))]
    assert texts == [("best answer.", "worst answer."), ("good.", "bad.")]
    assert "vlfeedback: 2 pairs from 3 rows; completions with a non-numeric rating (left out): 1; rows without a " \
           "pair: 1" in logged
    every = load_pairs(load_config(None, [f"data.train={path}", "data.format_options.pairs=all",
                                          "data.format_options.margin=2"]), log=lambda *_: None)
    assert [(every[i]["chosen"][0]["content"][0]["text"], every[i]["rejected"][0]["content"][0]["text"])
            for i in range(len(every))] == [("best answer.", "worst answer."), ("ok.", "worst answer."),
                                            ("good.", "bad.")]  # 5-2 and 4-2 clear the margin of 2, 5-4 does not
    with pytest.raises(FormatError, match="not options of vlfeedback"):
        load_pairs(load_config(None, [f"data.train={path}", "data.format_options.aspects=x"]))


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("name", ["rlaif_v", "rlhf_v", "vlfeedback", "povid", "llava_rlhf", "ha_dpo", "mdpo",
                                  "llamafactory", "swift", "trl_string_content", "mmpr"])
def test_each_format_trains_a_step(family, name, tiny_model_dir, tmp_path):
    writer, _, options, _ = FIXTURES[name]
    path = writer(tmp_path / "data")
    out = tmp_path / "run"
    train(load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.train={path}", f"train.output_dir={out}",
                             "train.max_steps=1", "train.batch_size=2", "train.progress=false",
                             "train.mixed_precision=no", *options_overrides(options)]))
    record = read_metrics(out / "metrics.jsonl")[0]
    assert record["step"] == 1 and np.isfinite(record["loss"])


def test_unrelated_columns_are_refused_with_the_columns_and_the_formats():
    table = datasets.Dataset.from_dict({"sentence": ["a"], "label": [1], "picture": ["x.png"]})
    with pytest.raises(FormatError) as info:
        apply_format(table)
    message = str(info.value)
    assert "['label', 'picture', 'sentence']" in message
    for name in known_formats():
        assert name in message
    assert "data.columns" in message and "data.format=NAME" in message


def test_columns_map_by_hand_and_format_can_be_forced(tmp_path):
    table = datasets.Dataset.from_dict({"picture": [[]], "ask": ["is it red?"], "good": ["yes."], "bad": ["no."]})
    rows = apply_format(table, columns={"ask": "prompt", "good": "chosen", "bad": "rejected", "picture": "images"},
                        log=lambda *_: None)
    assert PreferenceDataset(rows)[0]["chosen"][0]["content"][0]["text"] == "yes."
    with pytest.raises(FormatError, match="does not have"):
        apply_format(table, columns={"question": "prompt"})
    with pytest.raises(FormatError, match="needs the columns"):
        apply_format(table, name="rlaif_v")
    assert detect_format(["image", "question", "chosen", "rejected", "ds_name"]).name == "rlaif_v"


def test_a_bad_row_in_a_reader_is_named(tmp_path):
    path = rlhf_v(tmp_path)
    table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    broken = table.map(lambda row, i: {"text": "not json" if i == 2 else row["text"]}, with_indices=True)
    rows = PreferenceDataset(apply_format(broken, log=lambda *_: None))
    assert rows[1]["chosen"]
    with pytest.raises(DataError) as info:
        rows[2]
    assert info.value.index == 2 and info.value.field == "text" and "not a JSON object" in str(info.value)


@pytest.mark.parametrize("out_name", ["converted.jsonl", "converted"])
@pytest.mark.parametrize("name", ["vlfeedback", "llamafactory", "rlhf_v"])
def test_convert_writes_the_same_rows_in_the_package_layout(name, out_name, tmp_path, capsys):
    from vlmdpo.cli import main

    writer, _, options, count = FIXTURES[name]
    path = writer(tmp_path / "data")
    original = load_pairs(load_config(None, [f"data.train={path}", *options_overrides(options)]), log=lambda *_: None)
    out = tmp_path / "out" / out_name
    main(["data", "convert", str(path), str(out), *[f"--option={k}={v}" for k, v in options.items()]])
    assert f"wrote {out}" in capsys.readouterr().out
    logged = []
    converted = load_pairs(load_config(None, [f"data.train={out}"]), log=logged.append)
    assert logged[0].startswith("data format: trl") and len(converted) == len(original) == count
    for i in range(count):
        ours, theirs = converted[i], original[i]
        for key in ("prompt", "chosen", "rejected"):
            assert ours[key] == theirs[key]
        assert [np.asarray(im).tolist() for im in ours["images"]] == [np.asarray(im).tolist() for im in theirs["images"]]


def test_inspect_reports_layout_lengths_sizes_and_plots(tmp_path, capsys):
    from vlmdpo.cli import main

    path = llava_rlhf(tmp_path)
    main(["data", "inspect", str(path), "--plot", str(tmp_path / "lengths.png")])
    out = capsys.readouterr().out
    assert f"{path}: format llava_rlhf, 4 rows (sampled 4)" in out
    assert "chosen words: p50 5" in out and "image sizes: width 24-24-24" in out and "images per row: 1: 4" in out
    assert (tmp_path / "lengths.png").stat().st_size > 5_000


def test_inspect_without_plot_writes_no_file_and_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    from vlmdpo.cli import main

    path = llava_rlhf(tmp_path / "data")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    main(["data", "inspect", str(path)])
    out = capsys.readouterr().out
    assert "chosen words: p50 5, p90" in out and "length histogram: add --plot PATH to write one" in out
    assert list((tmp_path / "here").iterdir()) == [] and not list(tmp_path.rglob("*_lengths.png"))


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_held_out_pairs_in_a_public_layout_are_evaluated_during_training(family, tiny_model_dir, tmp_path):
    path = rlaif_v(tmp_path / "data")
    out = tmp_path / "run"
    train(load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.train={path}", f"data.eval={path}",
                             "train.eval_steps=1", f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=2",
                             "train.progress=false", "train.mixed_precision=no"]))
    evaluated = [r for r in read_metrics(out / "metrics.jsonl") if "eval/rewards/accuracies" in r]
    assert [r["step"] for r in evaluated] == [1] and np.isfinite(evaluated[0]["eval/logps/chosen"])
