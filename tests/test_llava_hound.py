"""LLaVA-Hound's video DPO pairs (``vlmdpo/data/readers/llava_hound.py``): a ``sft_dpo_17k.jsonl`` and its frame
folders, written here in the published layout (the jsonl under ``video_instruction/train/dpo/``, JPEG frames
``c01_0001.jpeg``, ... under ``train_300k/<video>/``), are recognised, read into exact rows, refused record by
record with the fix, and read end to end into frames in file-name order."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmdpo.config import load_config
from vlmdpo.data.formats import apply_format, detect_format
from vlmdpo.data.rows import DataError, load_preference_dataset
from vlmdpo.train.run_data import load_pairs

RECORDS = [  # video -> frame count; the third video has more than nine frames, so c01_0010 follows c01_0009
    {"id": "v_q1", "prompt": "What is the man doing with the ladder?", "answer": "He climbs it to fix a lamp.",
     "chosen": "He climbs the ladder to change a lamp.", "rejected": "He is painting a fence.",
     "chosen_score": 5, "rejected_score": 2, "video": "v_Ladder01"},
    {"id": "v_q2", "prompt": "<video>\nWhat colour is the car?", "answer": "Red.", "chosen": "The car is red.",
     "rejected": "The car is blue.", "chosen_score": 4.5, "rejected_score": 1.5, "video": "webvid_1066"},
    {"id": "v_q3", "prompt": "How many dogs run across the field?", "answer": "Two.",
     "chosen": "Two dogs run across it.", "rejected": "A single cat walks by.", "chosen_score": 4,
     "rejected_score": 3, "video": "vidal_887"},
]
FRAMES = {"v_Ladder01": 3, "webvid_1066": 2, "vidal_887": 11}


def frame(video, k):
    """Frame ``k`` of ``video`` in its own colour, so a frame out of order shows."""
    seed = sum(map(ord, video))
    return Image.new("RGB", (24, 16), ((seed + 23 * k) % 256, (40 * k) % 256, (seed * 7 + k) % 256))


def write_frames(root):
    for video, count in FRAMES.items():
        folder = root / "train_300k" / video
        folder.mkdir(parents=True)
        for k in reversed(range(1, count + 1)):  # written last frame first: the order must come from the names
            frame(video, k).save(folder / f"c01_{k:04d}.jpeg")


def write_jsonl(root, records):
    path = root / "video_instruction" / "train" / "dpo" / "sft_dpo_17k.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def hound(tmp_path):
    write_frames(tmp_path)
    return write_jsonl(tmp_path, RECORDS), tmp_path / "train_300k"


def test_the_published_layout_is_detected_and_read_exactly(hound):
    path, _ = hound
    table = load_preference_dataset(str(path))
    assert detect_format(table.column_names).name == "llava_hound"
    logged = []
    rows = apply_format(table, log=logged.append)
    assert logged[0].startswith("data format: llava_hound (")
    assert [rows[i] for i in range(len(rows))] == [
        {"videos": ["v_Ladder01"], "prompt": "What is the man doing with the ladder?",
         "chosen": "He climbs the ladder to change a lamp.", "rejected": "He is painting a fence.",
         "chosen_score": 5.0, "rejected_score": 2.0},
        {"videos": ["webvid_1066"], "prompt": "<video>\nWhat colour is the car?", "chosen": "The car is red.",
         "rejected": "The car is blue.", "chosen_score": 4.5, "rejected_score": 1.5},
        {"videos": ["vidal_887"], "prompt": "How many dogs run across the field?",
         "chosen": "Two dogs run across it.", "rejected": "A single cat walks by.", "chosen_score": 4.0,
         "rejected_score": 3.0},
    ]


@pytest.mark.parametrize("change", [
    lambda r: {k: v for k, v in r.items() if k != "video"},  # TRL's plain layout, with scores and ids
    lambda r: {**r, "videos": [r["video"]]},  # the package's own rows, which name their videos list
], ids=["without_video", "with_videos_list"])
def test_the_package_layout_stays_canonical(change, tmp_path):
    path = write_jsonl(tmp_path, [change(r) for r in RECORDS])
    assert detect_format(load_preference_dataset(str(path)).column_names).name == "trl"


BAD = {  # record -> (field, what the message says)
    "no_question": ({"prompt": None}, "prompt", "record 'v_q3' has no question (prompt is None)"),
    "placeholder_only": ({"prompt": "<video>\n"}, "prompt", "record 'v_q3' has no question (prompt is '<video>\\n')"),
    "empty_video": ({"video": ""}, "video", "record 'v_q3' names no frame folder (video is '')"),
    "null_score": ({"rejected_score": None}, "rejected_score", "record 'v_q3' has rejected_score None, not a number"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_record_is_named_with_its_id_field_and_fix(name, tmp_path):
    change, field, problem = BAD[name]
    path = write_jsonl(tmp_path, RECORDS[:2] + [{**RECORDS[2], **change}])
    rows = apply_format(load_preference_dataset(str(path)), log=lambda *_: None)
    assert rows[1]["chosen"] == "The car is red."
    with pytest.raises(DataError) as info:
        rows[2]
    assert info.value.index == 2 and info.value.field == field
    assert str(info.value).startswith(f"row 2 (counted from 0), field {field!r}: {problem}. Fix: ")
    assert "drop the record" in info.value.fix


def test_scores_written_as_text_are_read_as_numbers_and_a_word_is_refused(tmp_path):
    scores = [("5", "2"), ("4.5", "1.5"), ("N/A", "3")]
    records = [{**r, "chosen_score": c, "rejected_score": s} for r, (c, s) in zip(RECORDS, scores)]
    rows = apply_format(load_preference_dataset(str(write_jsonl(tmp_path, records))), log=lambda *_: None)
    assert (rows[1]["chosen_score"], rows[1]["rejected_score"]) == (4.5, 1.5)
    with pytest.raises(DataError, match=r"field 'chosen_score': record 'v_q3' has chosen_score 'N/A', not a "
                                        r"number\. Fix: give chosen_score as the judge's number for the chosen"):
        rows[2]


def test_rows_read_end_to_end_hold_the_frames_in_file_name_order(hound):
    path, frames_root = hound
    logged = []
    pairs = load_pairs(load_config(None, [f"data.train={path}", f"data.image_root={frames_root}"]),
                       log=logged.append)
    assert logged[0].startswith("data format: llava_hound (") and len(pairs) == 3
    for i, record in enumerate(RECORDS):
        row = pairs[i]
        folder = frames_root / record["video"]
        written = [np.asarray(Image.open(folder / f"c01_{k:04d}.jpeg").convert("RGB"))
                   for k in range(1, FRAMES[record["video"]] + 1)]
        assert len(row["videos"]) == 1 and row["images"] == []
        assert [np.asarray(f).tolist() for f in row["videos"][0]] == [f.tolist() for f in written]
        question = record["prompt"].removeprefix("<video>")
        assert row["prompt"] == [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": record["chosen"]}]}]
        assert (row["chosen_score"], row["rejected_score"]) == (record["chosen_score"], record["rejected_score"])
