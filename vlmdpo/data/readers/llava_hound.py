"""LLaVA-Hound's video preference pairs (arXiv 2404.01258; ``ShareGPTVideo/train_video_and_instruction``, file
``video_instruction/train/dpo/sft_dpo_17k.jsonl``; Apache-2.0 on the dataset card, while the frames come from
ActivityNet, WebVid and VIDAL videos, whose own terms apply): 17k questions about videos, each with two answers of
the SFT model scored by a language-model judge against a detailed caption.

Columns (one JSON object per line): ``id``, ``prompt`` (the question), ``answer`` (a reference answer, unused
here), ``chosen``, ``rejected``, ``chosen_score``, ``rejected_score`` and ``video``: the name of the video's frame
folder, relative to the folder the frame archives (``train_300k/chunk_*.tar.gz``) unpack into: point
``data.image_root`` there. A folder holds JPEG frames taken at 2 fps and named ``c01_0001.jpeg``,
``c01_0002.jpeg``, ...; the frames, in file-name order, are the video.

Mapping: ``videos = [video]``, ``prompt`` the question as a plain string (a ``<video>`` in it marks where the video
goes; without one the video comes before the text, as LLaVA-Hound's trainer puts it), ``chosen`` and
``rejected`` as they are, and the two scores as numbers under the package's score columns of the same names
(``vlmdpo.data.rows.SCORE_COLUMNS``: MM-DPO's margin-scaled beta reads their difference). A record without a
question, with an empty ``video`` or with a score that is not a number is a ``DataError`` naming the row, the
record's ``id``, the field and the fix.

Where the layout was confirmed (their code read, not copied): in ``RifleZhang/LLaVA-Hound-DPO``,
``llava_hound_dpo/dpo_scripts/run_dpo.py`` (``DPODataset``) reads ``prompt``, ``chosen``, ``rejected`` and
``video``, joins ``video`` onto ``--video_folder`` and moves any ``<video>`` in the prompt to its start;
``llava_hound_dpo/dpo_scripts/train_dpo.sh`` and ``setup/setup_train_data.sh`` name the file and unpack the
frame archives into that folder; ``llava_hound_dpo/llava/model/multimodal_encoder/languagebind/video/
processing_video.py`` (``load_frames``) takes every file of the folder sorted by name; and
``llava_hound_dpo/inference/inference_utils.py`` (``decode2frame``) writes frames with ffmpeg at 2 fps as
``c01_%04d.jpeg``. ``id`` and ``answer`` are read from this file by ``Wang-Xiaodong1899/LLaVA-NeXT``
(``filter_dpo_video.py``; ``llava/train/train_dpo.py``, which its ``scripts/train/dpo_2.sh`` runs on it), and
LLaVA-NeXT's ``scripts/archived/dpo_data_info.py`` writes other preference data into the same record shape,
``chosen_score`` and ``rejected_score`` included. No line of the file itself could be read here (no download):
the test fixture is written from these sources.
"""

from __future__ import annotations

import math

from vlmdpo.data.row_format import RowFormat
from vlmdpo.data.rows import VIDEO_PLACEHOLDER, DataError

SCORES = ("chosen_score", "rejected_score")


def _question(row: dict) -> str:
    question = row.get("prompt")
    if not isinstance(question, str) or not question.replace(VIDEO_PLACEHOLDER, "").strip():
        raise DataError(None, "prompt", f"record {row.get('id')!r} has no question (prompt is {question!r})",
                        "give the record its question as a string in prompt, or drop the record",
                        kind="missing_question")
    return question


def _video(row: dict) -> str:
    video = row.get("video")
    if not isinstance(video, str) or not video.strip():
        raise DataError(None, "video", f"record {row.get('id')!r} names no frame folder (video is {video!r})",
                        "give video as the name of the record's frame folder under data.image_root (where "
                        "train_300k's archives were unpacked), or drop the record", kind="missing_video")
    return video


def _score(row: dict, name: str) -> float:
    value = row.get(name)
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DataError(None, name, f"record {row.get('id')!r} has {name} {value!r}, not a number",
                        f"give {name} as the judge's number for the {name.split('_')[0]} answer, or drop the "
                        "record", kind="bad_score")
    return number


def _llava_hound_row(row: dict, options: dict) -> dict:
    return {"videos": [_video(row)], "prompt": _question(row), "chosen": row["chosen"], "rejected": row["rejected"],
            **{name: _score(row, name) for name in SCORES}}


# the video and score columns make it more specific than the package's own layout (prompt, chosen, rejected),
# which wins instead where the rows already carry images or videos lists
LLAVA_HOUND = RowFormat(
    name="llava_hound", description="LLaVA-Hound video DPO: prompt, video (a frame folder), chosen, rejected, "
    "chosen_score, rejected_score", required=frozenset({"prompt", "video", "chosen", "rejected", *SCORES}),
    excluded=frozenset({"images", "videos"}), convert=_llava_hound_row)
