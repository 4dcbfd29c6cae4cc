"""Preference rows: every bad input fails with a DataError that names the row, the field and a fix;
every supported image and row format comes out as the same conversational form."""

import io
import json

import datasets
import pytest
from PIL import Image

from vlmdpo.data.rows import DataError, PreferenceDataset, load_preference_dataset, normalize_row

PROMPT = "describe the image."
CHOSEN = "a large red circle."
REJECTED = "a small blue square."


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def conversational_prompt(num_images=1, text=PROMPT):
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def assistant(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def row(**changes):
    base = {"images": [Image.new("RGB", (8, 8), "red")], "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    base.update(changes)
    return base


def check_error(error: DataError, index, field, *problem_words):
    message = str(error)
    assert error.index == index and error.field == field
    assert f"row {index}" in message and repr(field) in message
    assert "Fix: " in message and len(message.split("Fix: ", 1)[1]) > 10
    for word in problem_words:
        assert word in message


def test_normalized_row_shape():
    image = Image.new("RGB", (8, 8), "red")
    out = normalize_row(row(images=[image]), 0)
    assert out["prompt"] == conversational_prompt(1)
    assert out["chosen"] == assistant(CHOSEN)
    assert out["rejected"] == assistant(REJECTED)
    assert len(out["images"]) == 1 and out["images"][0].mode == "RGB" and out["images"][0].size == (8, 8)


def test_prompt_only_rows_for_generation():
    image = Image.new("RGB", (8, 8), "red")
    out = normalize_row({"images": [image], "prompt": "describe it"}, 0, responses=())
    assert set(out) == {"images", "videos", "video_metadata", "prompt"} and out["prompt"] == conversational_prompt(1, "describe it")
    assert out["videos"] == out["video_metadata"] == []
    with pytest.raises(DataError) as info:
        normalize_row({"images": [image]}, 3, responses=())
    check_error(info.value, 3, "prompt", "has no 'prompt' column", "add a 'prompt' column")


# --- bad rows -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_missing_column_and_missing_value_are_told_apart(field):
    bad = row()
    del bad[field]
    with pytest.raises(DataError) as info:
        normalize_row(bad, 7)
    check_error(info.value, 7, field, f"has no {field!r} column", f"add a {field!r} column")
    assert "row 7 (counted from 0)" in str(info.value)
    with pytest.raises(DataError) as info:
        normalize_row({**row(), field: None}, 7)
    check_error(info.value, 7, field, "the value is missing (null) in this row", "drop the row")


def test_missing_image_file(tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(DataError) as info:
        normalize_row(row(images=[str(missing)]), 3)
    check_error(info.value, 3, "images[0]", "does not exist", str(missing), "image_root")


def test_missing_image_file_relative_to_image_root(tmp_path):
    with pytest.raises(DataError) as info:
        normalize_row(row(images=["sub/a.png"]), 2, image_root=str(tmp_path))
    check_error(info.value, 2, "images[0]", str(tmp_path / "sub" / "a.png"))


def test_unreadable_image_bytes():
    good = png_bytes(Image.new("RGB", (8, 8), "red"))
    with pytest.raises(DataError) as info:
        normalize_row(row(images=[good, b"definitely not a png"]), 5)
    check_error(info.value, 5, "images[1]", "not an image")


def test_truncated_image_file(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(png_bytes(Image.new("RGB", (64, 64), "red"))[:60])
    with pytest.raises(DataError) as info:
        normalize_row(row(images=[str(path)]), 1)
    check_error(info.value, 1, "images[0]", "cannot be decoded")


def test_unsupported_image_value():
    with pytest.raises(DataError) as info:
        normalize_row(row(images=[12345]), 4)
    check_error(info.value, 4, "images[0]", "int")


@pytest.mark.parametrize("field", ["chosen", "rejected"])
@pytest.mark.parametrize("empty", ["", "   \n", [], assistant(""), assistant("  ")])
def test_empty_response(field, empty):
    with pytest.raises(DataError) as info:
        normalize_row(row(**{field: empty}), 9)
    check_error(info.value, 9, field, "empty")


@pytest.mark.parametrize("num_blocks, num_images", [(2, 1), (0, 1), (1, 0), (1, 2)])
def test_image_placeholder_count_mismatch(num_blocks, num_images):
    images = [Image.new("RGB", (8, 8), "red")] * num_images
    with pytest.raises(DataError) as info:
        normalize_row(row(images=images, prompt=conversational_prompt(num_blocks)), 6)
    check_error(info.value, 6, "prompt", f"{num_blocks} image placeholder", f"{num_images} image")


def test_image_block_in_response():
    response = [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    with pytest.raises(DataError) as info:
        normalize_row(row(chosen=response), 0)
    check_error(info.value, 0, "chosen", "image block")


def test_prompt_of_wrong_type():
    with pytest.raises(DataError) as info:
        normalize_row(row(prompt=42), 8)
    check_error(info.value, 8, "prompt", "int")


# --- good rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_images", [0, 1, 3])
def test_plain_string_rows_get_one_image_block_per_image(num_images):
    images = [Image.new("RGB", (8, 8), "red")] * num_images
    out = normalize_row(row(images=images), 0)
    assert out["prompt"] == conversational_prompt(num_images)
    assert out["chosen"] == assistant(CHOSEN) and out["rejected"] == assistant(REJECTED)
    assert len(out["images"]) == num_images


def test_text_only_row_without_images_column():
    out = normalize_row({"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, 0)
    assert out["images"] == [] and out["prompt"] == conversational_prompt(0)


def test_single_image_column():
    out = normalize_row({"image": Image.new("RGB", (8, 8)), "prompt": PROMPT, "chosen": CHOSEN,
                         "rejected": REJECTED}, 0)
    assert len(out["images"]) == 1 and out["prompt"] == conversational_prompt(1)


def test_conversational_rows_pass():
    prompt = [
        {"role": "system", "content": "answer briefly."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "left:"},
                                     {"type": "image"}, {"type": "text", "text": "right. same?"}]},
    ]
    images = [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")]
    out = normalize_row(row(images=images, prompt=prompt, chosen=assistant("no."),
                            rejected=[{"role": "assistant", "content": "yes."}]), 0)
    assert out["prompt"] == [{"role": "system", "content": [{"type": "text", "text": "answer briefly."}]},
                             prompt[1]]
    assert out["chosen"] == assistant("no.") and out["rejected"] == assistant("yes.")
    assert [im.getpixel((0, 0)) for im in out["images"]] == [(255, 0, 0), (0, 0, 255)]


def test_union_schema_blocks_are_trimmed():
    """datasets stores every block with all keys of the union schema (text=None on image blocks)."""
    prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": PROMPT}]}]
    out = normalize_row(row(prompt=prompt), 0)
    assert out["prompt"] == conversational_prompt(1)


def test_images_as_path_bytes_pil_and_feature_dict(tmp_path):
    red, green, blue, grey = (Image.new("RGB", (6, 4), c) for c in ("red", "green", "blue", "grey"))
    red.save(tmp_path / "red.png")
    green.save(tmp_path / "green.png")
    images = [
        str(tmp_path / "red.png"),                    # absolute path
        "green.png",                                  # relative to image_root
        png_bytes(blue),                              # encoded bytes
        Image.new("L", (6, 4), 128),                  # PIL, converted to RGB
        {"bytes": png_bytes(grey), "path": None},     # undecoded datasets Image feature
        {"bytes": None, "path": str(tmp_path / "red.png")},
    ]
    out = normalize_row(row(images=images, prompt=PROMPT), 0, image_root=str(tmp_path))
    assert all(im.mode == "RGB" and im.size == (6, 4) for im in out["images"])
    assert [im.getpixel((0, 0)) for im in out["images"]] == [
        (255, 0, 0), (0, 128, 0), (0, 0, 255), (128, 128, 128), (128, 128, 128), (255, 0, 0)]
    assert out["prompt"] == conversational_prompt(6)


def _image_feature_dataset():
    ds = datasets.Dataset.from_dict({
        "images": [[Image.new("RGB", (8, 8), "red")], [Image.new("RGB", (8, 8), "blue")] * 2, []],
        "prompt": [PROMPT, "compare them.", "is there a dog?"],
        "chosen": [CHOSEN, "they differ.", "no."],
        "rejected": [REJECTED, "they are the same.", "yes."],
    })
    return ds.cast_column("images", datasets.List(datasets.Image()))


def test_datasets_image_feature(tmp_path):
    folder = tmp_path / "saved"
    _image_feature_dataset().save_to_disk(str(folder))
    pairs = PreferenceDataset(datasets.load_from_disk(str(folder)))
    assert len(pairs) == 3
    first, second, third = pairs[0], pairs[1], pairs[2]
    assert first["index"] == 0 and first["images"][0].getpixel((0, 0)) == (255, 0, 0)
    assert len(second["images"]) == 2 and second["prompt"] == conversational_prompt(2, "compare them.")
    assert third["images"] == [] and third["prompt"] == conversational_prompt(0, "is there a dog?")


def test_datasets_image_feature_undecoded():
    ds = _image_feature_dataset().cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert isinstance(ds[0]["images"][0], dict)
    out = PreferenceDataset(ds)[1]
    assert [im.getpixel((0, 0)) for im in out["images"]] == [(0, 0, 255)] * 2


# --- loading from files -------------------------------------------------------------------------

def test_load_jsonl_with_relative_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "imgs" / "b.png")
    rows = [
        {"images": ["imgs/a.png"], "prompt": conversational_prompt(1), "chosen": assistant(CHOSEN),
         "rejected": assistant(REJECTED)},
        {"images": ["imgs/b.png", "imgs/a.png"], "prompt": conversational_prompt(2),
         "chosen": assistant("two."), "rejected": assistant("one.")},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_preference_dataset(str(path))
    assert len(ds) == 2
    pairs = PreferenceDataset(ds, image_root=str(tmp_path))
    assert pairs[0]["prompt"] == conversational_prompt(1) and pairs[0]["chosen"] == assistant(CHOSEN)
    assert [im.getpixel((0, 0)) for im in pairs[1]["images"]] == [(0, 0, 255), (255, 0, 0)]
    # without image_root the relative path is looked up in the working directory, and named
    with pytest.raises(DataError) as info:
        PreferenceDataset(ds)[0]
    check_error(info.value, 0, "images[0]", "imgs/a.png", "image_root")


def test_load_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    _image_feature_dataset().to_parquet(str(path))
    pairs = PreferenceDataset(load_preference_dataset(str(path)))
    assert len(pairs) == 3
    assert [im.getpixel((0, 0)) for im in pairs[1]["images"]] == [(0, 0, 255)] * 2
    assert pairs[2]["chosen"] == assistant("no.")


@pytest.mark.parametrize("as_dict", [False, True])
def test_load_save_to_disk_folder(tmp_path, as_dict):
    ds = _image_feature_dataset()
    (datasets.DatasetDict({"train": ds}) if as_dict else ds).save_to_disk(str(tmp_path / "saved"))
    loaded = load_preference_dataset(str(tmp_path / "saved"))
    assert isinstance(loaded, datasets.Dataset) and len(loaded) == 3
    assert PreferenceDataset(loaded)[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)


# --- lazy validation ----------------------------------------------------------------------------

def test_preference_dataset_is_lazy_and_names_the_bad_row(tmp_path):
    ds = datasets.Dataset.from_dict({
        "images": [[], [str(tmp_path / "gone.png")], [], []],
        "prompt": [PROMPT] * 4,
        "chosen": [CHOSEN, CHOSEN, CHOSEN, ""],
        "rejected": [REJECTED] * 4,
    })
    pairs = PreferenceDataset(ds)  # nothing is read yet: no error
    assert len(pairs) == 4
    assert pairs[0]["index"] == 0 and pairs[2]["index"] == 2
    with pytest.raises(DataError) as info:
        pairs[1]
    check_error(info.value, 1, "images[0]", "gone.png")
    with pytest.raises(DataError) as info:
        pairs[3]
    check_error(info.value, 3, "chosen", "empty")
    with pytest.raises(DataError) as info:
        pairs.validate()
    assert info.value.index == 1
