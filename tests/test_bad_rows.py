"""A corpus of bad rows made here: each gets its named error from the up-front check (``vlmdpo validate`` and
``train``), or is skipped and listed with ``data.on_bad_row=skip``; no good row is lost, legal images train."""

import io
import json

import numpy as np
import pytest
from PIL import Image

import vlmdpo.train.loop as train_module
import vlmdpo.train.setup as train_setup
from vlmdpo.cli import main
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import ConfigError, load_config
from vlmdpo.data.rows import DataError, PreferenceDataset, load_preference_dataset
from vlmdpo.train.run_data import load_pairs
from vlmdpo.data.validate import BadRowsError, validate_rows

PROMPT = "describe the image."


def png(path, image):
    image.save(path)
    return path.name


def plain_corpus(folder):
    """Plain-string rows: ``(row, expected kind or None for a good row)``, with their image files."""
    folder.mkdir(parents=True, exist_ok=True)
    red = png(folder / "red.png", Image.new("RGB", (16, 16), "red"))
    grey16 = png(folder / "grey16.png", Image.fromarray(np.full((16, 16), 200 * 257, dtype=np.uint16)))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 16), "green").save(folder / "rotated.jpg", exif=exif)
    png(folder / "huge.png", Image.new("1", (10000, 10000)))
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    (folder / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.png").write_text("this is text, not a picture")
    Image.new("RGB", (8, 8), "blue").save(folder.parent / "outside.png")

    def pair(images, prompt=PROMPT, chosen="a red square.", rejected="a blue dog."):
        return {"images": images, "prompt": prompt, "chosen": chosen, "rejected": rejected}

    return [
        (pair([red]), None),
        (pair([grey16], chosen="a grey square."), None),
        (pair(["rotated.jpg"], chosen="a green bar."), None),
        (pair([], prompt="is the sky green?", chosen="no.", rejected="yes."), None),
        (pair([red, red], prompt="first <image> then <image>: same?", chosen="yes.", rejected="no."), None),
        (pair(["gone.png"]), "missing_image"),
        (pair(["cut.png"]), "unreadable_image"),
        (pair(["notes.png"]), "not_an_image"),
        (pair(["../outside.png"]), "image_outside_root"),
        (pair(["/proc/self/environ"]), "image_outside_root"),
        (pair(["huge.png"]), "image_too_large"),
        (pair([red], chosen="   "), "empty_response"),
        (pair([red], rejected=None), "null_value"),
        (pair([red], chosen="a red square.", rejected="a red square. "), "identical_responses"),
        (pair([red], prompt="<image> and <image>"), "placeholder_mismatch"),
        (pair([red], chosen="a red <image> square."), "placeholder_mismatch"),
        (pair([], prompt="red " * 1500), "too_long_for_model"),
        (pair([red]), None),
    ]


def conversational_corpus(folder):
    folder.mkdir(parents=True, exist_ok=True)
    red = png(folder / "red.png", Image.new("RGB", (16, 16), "red"))

    def user(*blocks, role="user"):
        return [{"role": role, "content": list(blocks)}]

    image, text = {"type": "image", "text": None}, lambda t: {"type": "text", "text": t}
    answer = lambda t, role="assistant": [{"role": role, "content": [text(t)]}]  # noqa: E731
    return [
        ({"images": [red], "prompt": user(image, text(PROMPT)), "chosen": answer("red."), "rejected": answer("blue.")},
         None),
        ({"images": [red], "prompt": user(image, text(PROMPT), role="robot"), "chosen": answer("red."),
          "rejected": answer("blue.")}, "bad_role"),
        ({"images": [red], "prompt": user(image, text(PROMPT)), "chosen": answer("red.", role="user"),
          "rejected": answer("blue.")}, "bad_role"),
        ({"images": [red], "prompt": user(image, text("<image> " + PROMPT)), "chosen": answer("red."),
          "rejected": answer("blue.")}, "placeholder_mismatch"),
        ({"images": [red, red], "prompt": user(image, text(PROMPT)), "chosen": answer("red."),
          "rejected": answer("blue.")}, "placeholder_mismatch"),
        ({"images": [red], "prompt": user(image, text(PROMPT)), "chosen": [{"role": "assistant", "content": [image]}],
          "rejected": answer("blue.")}, "image_in_response"),
        ({"images": [], "prompt": user(text("is it red?")), "chosen": answer("yes."), "rejected": answer("no.")},
         None),
    ]


def write(folder, corpus):
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _ in corpus))
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    plain, conversational = plain_corpus(base / "plain"), conversational_corpus(base / "chat")
    return {"plain": (write(base / "plain", plain), plain), "chat": (write(base / "chat", conversational),
                                                                     conversational)}


def config_for(model_dir, data, out, *more):
    return load_config(None, [f"model.name_or_path={model_dir}", f"data.train={data}", f"train.output_dir={out}",
                              "train.batch_size=2", "train.progress=false", "train.mixed_precision=no", *more])


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("which", ["plain", "chat"])
def test_each_bad_row_gets_its_named_error(family, which, corpora, tiny_model_and_processor, tiny_model_dir, tmp_path):
    path, corpus = corpora[which]
    config = config_for(tiny_model_dir, path, tmp_path)
    collator = PreferenceCollator(tiny_model_and_processor[1], max_response_length=64)
    report = validate_rows(load_pairs(config), collator, limit=1024, progress=False)
    found = {entry["row"]: entry["kind"] for entry in report.bad}
    expected = {i: kind for i, (_, kind) in enumerate(corpus) if kind}
    assert found == expected
    for entry in report.bad:
        assert entry["message"].startswith(f"row {entry['row']} (counted from 0), field ")
        assert entry["fix"] and entry["problem"]
    assert report.checked == len(corpus) and set(report.lengths) == {"prompt", "chosen", "rejected"}
    assert len(report.lengths["prompt"]) == len(corpus) - len(expected)


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_validate_command_lists_bad_rows_and_exits_1(family, corpora, tiny_model_dir, tmp_path, capsys):
    path, corpus = corpora["plain"]
    with pytest.raises(SystemExit) as info:
        main(["validate", f"model.name_or_path={tiny_model_dir}", f"data.train={path}", "train.progress=false",
              "--out", str(tmp_path / "bad.jsonl")])
    assert info.value.code == 1
    out = capsys.readouterr().out
    bad = sum(kind is not None for _, kind in corpus)
    assert f"checked {len(corpus)} of {len(corpus)} rows: {len(corpus) - bad} ok, {bad} bad" in out
    assert "missing_image: 1" in out and "prompt tokens: p50" in out
    listed = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert [entry["row"] for entry in listed] == [i for i, (_, kind) in enumerate(corpus) if kind]


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_training_stops_before_the_first_step_on_a_bad_row(family, corpora, tiny_model_dir, tmp_path):
    path, _ = corpora["plain"]
    with pytest.raises(BadRowsError) as info:
        train_module.train(config_for(tiny_model_dir, path, tmp_path / "run"))
    message = str(info.value)
    assert message.startswith("12 of 18 checked rows are bad (") and "First: row 5 (counted from 0)" in message
    assert "data.on_bad_row=skip" in message and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert (tmp_path / "run" / "bad_rows.jsonl").exists()


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_skip_trains_on_every_good_row_and_lists_the_skipped(family, corpora, tiny_model_dir, tmp_path, capsys):
    path, corpus = corpora["plain"]
    seen, images = [], {}
    step = train_module.dpo_step

    def capture(policy, reference, batch, *args, **kwargs):
        seen.extend(batch["index"])
        return step(policy, reference, batch, *args, **kwargs)

    original_getitem = PreferenceDataset.__getitem__

    def remember(self, position):
        row = original_getitem(self, position)
        images[row["index"]] = row["images"]
        return row

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "dpo_step", capture)
        patch.setattr(PreferenceDataset, "__getitem__", remember)
        train_module.train(config_for(tiny_model_dir, path, out, "data.on_bad_row=skip", "train.num_epochs=1"))
    good = [i for i, (_, kind) in enumerate(corpus) if kind is None]
    assert sorted(seen) == good  # every good row once in the epoch, no bad one
    skipped = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert {e["row"]: e["kind"] for e in skipped} == {i: k for i, (_, k) in enumerate(corpus) if k}
    assert f"skipped {len(skipped)} of {len(corpus)} rows" in capsys.readouterr().out
    assert images[1][0].getpixel((0, 0)) == (200, 200, 200)  # 16-bit grey, not clipped to white
    assert images[2][0].size == (16, 32)  # EXIF rotation applied


def test_non_utf8_and_non_json_lines_are_named(tmp_path):
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}).encode()
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good + b"\n" + good.replace(b"b", b"caf\xe9") + b"\n")
    with pytest.raises(DataError) as info:
        load_preference_dataset(str(path))
    assert "line 2 (counted from 1)" in str(info.value) and "not UTF-8" in str(info.value)
    assert info.value.kind == "bad_encoding"
    path = tmp_path / "broken.jsonl"
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "a", "chosen": \n')
    with pytest.raises(DataError) as info:
        load_preference_dataset(str(path))
    assert "line 3 (counted from 1)" in str(info.value) and info.value.kind == "bad_json"


@pytest.mark.parametrize("overrides, words", [
    (["train.max_steps=-1"], "train.max_steps must be >= 1"),
    (["train.max_steps=0"], "train.max_steps must be >= 1"),
    (["train.num_epochs=0"], "train.num_epochs must be > 0"),
    (["data.on_bad_row=skip", "data.validate=sample"], "needs data.validate=full"),
    (["data.validate=maybe"], "data.validate must be full, sample or off"),
    (["train.on_nonfinite=ignore"], "train.on_nonfinite must be error or skip"),
])
def test_config_mistakes_are_caught_when_read(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, ["data.train=x.jsonl", *overrides])


def test_paths_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    def no_model(config):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train_setup, "build_policy", no_model)
    (tmp_path / "file").write_text("")
    cases = [([f"data.train={tmp_path / 'missing.jsonl'}"], "does not exist"),
             ([f"data.train={tmp_path / 'file'}", f"train.output_dir={tmp_path / 'file'}"], "is a file"),
             ([f"data.train={tmp_path / 'file'}", f"train.output_dir={tmp_path / 'file' / 'run'}"], "is a file"),
             ([f"data.train={tmp_path / 'file'}", f"data.image_root={tmp_path / 'nope'}"], "is not a folder")]
    for overrides, words in cases:
        with pytest.raises(ConfigError, match=words):
            train_module.train(load_config(None, overrides))


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_worker_processes_and_samples_find_the_same_rows(family, corpora, tiny_model_and_processor, tiny_model_dir,
                                                         tmp_path):
    path, corpus = corpora["plain"]
    pairs = load_pairs(config_for(tiny_model_dir, path, tmp_path))
    collator = PreferenceCollator(tiny_model_and_processor[1], max_response_length=64)
    alone = validate_rows(pairs, collator, limit=1024, workers=1, progress=False)
    shared = validate_rows(pairs, collator, limit=1024, workers=2, progress=False)
    assert shared.bad == alone.bad and dict(shared.lengths) == dict(alone.lengths)
    sample = validate_rows(pairs, collator, limit=1024, sample=6, seed=4, progress=False)
    assert sample.checked == 6 and sample.total == len(corpus)
    assert sample.bad == [entry for entry in alone.bad if entry["row"] in {e["row"] for e in sample.bad}]
    assert validate_rows(pairs, collator, limit=1024, sample=6, seed=4, progress=False).bad == sample.bad


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_skip_long_prompts_skips_and_lists_only_the_long_ones(family, tiny_model_dir, tmp_path, capsys):
    rows = [{"images": [], "prompt": "is it red?" if i % 3 else "is it red? " * 40, "chosen": "yes.",
             "rejected": "no."} for i in range(6)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    train_module.train(config_for(tiny_model_dir, path, out, "data.max_prompt_length=40", "data.skip_long_prompts=true",
                                  "train.max_steps=1"))
    skipped = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(e["row"], e["kind"]) for e in skipped] == [(0, "prompt_too_long"), (3, "prompt_too_long")]
    assert "skipped 2 of 6 rows (prompt_too_long: 2)" in capsys.readouterr().out
