"""Turn shapes-world scenes into `datasets` tables: the base dataset, DPO pairs, SFT rows.

Every random choice flows from `seed` through string-seeded `random.Random` instances
(seeded with SHA-512 of the string, so independent of PYTHONHASHSEED): the same seed gives the
same image bytes and text on every machine.
"""

from __future__ import annotations

import random

import datasets

from .captions import (
    DESCRIBE_PROMPT,
    HALLUCINATIONS,
    applicable_hallucinations,
    caption,
    noisy_web_caption,
    yes_no_questions,
)
from .world import MAX_OBJECTS, Scene, draw_scene, sample_scene

# datasets>=4 names a list feature `List`; 3.x only has `Sequence`, which means the same here.
_ListFeature = getattr(datasets, "List", datasets.Sequence)

SHAPES_FEATURES = datasets.Features(
    {
        "images": _ListFeature(datasets.Image()),
        "objects": _ListFeature(datasets.Value("string")),
        "scene": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "noisy_caption": datasets.Value("string"),
        "questions": _ListFeature(datasets.Value("string")),
        "answers": _ListFeature(datasets.Value("string")),
        "background": datasets.Value("string"),
    }
)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must lie in [0, 1]")


def _build_split(
    rng: random.Random,
    num_rows: int,
    image_size: int,
    noisy_background_fraction: float,
    num_questions: tuple[int, int],
    object_range: tuple[int, int],
    exclude: set[str],
) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in SHAPES_FEATURES}
    while len(columns["scene"]) < num_rows:
        scene = sample_scene(rng, *object_range)
        scene_json = scene.to_json()
        if scene_json in exclude:
            continue
        background = "noisy" if rng.random() < noisy_background_fraction else "plain"
        qa = yes_no_questions(scene, rng, *num_questions)
        columns["images"].append([draw_scene(scene, image_size, background, rng)])
        columns["objects"].append(scene.names)
        columns["scene"].append(scene_json)
        columns["caption"].append(caption(scene))
        columns["noisy_caption"].append(noisy_web_caption(scene, rng))
        columns["questions"].append([q for q, _ in qa])
        columns["answers"].append([a for _, a in qa])
        columns["background"].append(background)
    return columns


def build_shapes_dataset(
    seed: int = 0,
    num_train: int = 2000,
    num_test: int = 200,
    image_size: int = 64,
    noisy_background_fraction: float = 0.3,
    n_pos_questions: int = 2,
    n_neg_questions: int = 2,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
) -> datasets.DatasetDict:
    """Build the shapes-world `DatasetDict` with splits "train" and "test".

    Columns: `images` (list of one RGB image), `objects` (canonical names, e.g. "red circle"),
    `scene` (JSON for `Scene.from_json`), `caption` (ground truth), `noisy_caption` (ground
    truth plus one absent object), `questions` / `answers` (yes/no, aligned lists) and
    `background` ("plain" or "noisy", the latter with probability `noisy_background_fraction`).
    The test split is drawn first and no train scene is identical to a test scene.
    """
    _check_fraction("noisy_background_fraction", noisy_background_fraction)
    if num_train < 0 or num_test < 0:
        raise ValueError(f"row counts must be >= 0, got num_train={num_train}, num_test={num_test}")
    common = dict(
        image_size=image_size,
        noisy_background_fraction=noisy_background_fraction,
        num_questions=(n_pos_questions, n_neg_questions),
        object_range=(min_objects, max_objects),
    )
    test = _build_split(random.Random(f"shapes-{seed}-test"), num_test, exclude=set(), **common)
    train = _build_split(random.Random(f"shapes-{seed}-train"), num_train, exclude=set(test["scene"]), **common)
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=SHAPES_FEATURES),
            "test": datasets.Dataset.from_dict(test, features=SHAPES_FEATURES),
        }
    )


def user_prompt(text: str = DESCRIBE_PROMPT) -> list[dict]:
    """TRL conversational prompt: one user turn holding the image, then `text`."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def assistant_message(text: str) -> list[dict]:
    """TRL conversational completion: one assistant turn holding `text`."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def povid_pairs(dataset_split: datasets.Dataset, seed: int = 0, prompt_text: str = DESCRIBE_PROMPT) -> datasets.Dataset:
    """TRL-style preference rows: the ground-truth caption is chosen, a hallucinated rewrite of it
    (POVID, arXiv:2402.11411) is rejected.

    Columns: `images`, `prompt`, `chosen`, `rejected`, `objects`, and `hallucination` (which
    rewrite in `HALLUCINATIONS` made the rejected text). Row i's rewrite depends only on
    (seed, i), so subsets and reorders of the input do not reshuffle the others.
    """

    def to_pair(scene_json: str, caption_text: str, index: int) -> dict:
        scene = Scene.from_json(scene_json)
        rng = random.Random(f"povid-{seed}-{index}")
        kind = rng.choice(applicable_hallucinations(scene))
        return {
            "prompt": user_prompt(prompt_text),
            "chosen": assistant_message(caption_text),
            "rejected": assistant_message(HALLUCINATIONS[kind](scene, rng)),
            "hallucination": kind,
        }

    pairs = dataset_split.map(to_pair, input_columns=["scene", "caption"], with_indices=True)
    return pairs.select_columns(["images", "prompt", "chosen", "rejected", "objects", "hallucination"])


def caption_sft_rows(
    dataset_split: datasets.Dataset,
    noisy_fraction: float = 0.3,
    seed: int = 0,
    prompt_text: str = DESCRIBE_PROMPT,
) -> datasets.Dataset:
    """Prompt/completion rows for supervised caption pretraining.

    Exactly round(noisy_fraction * len) rows, picked from `seed`, take `noisy_caption` (one
    hallucinated object) as the completion, the rest take the clean `caption`; that mix is what
    gives the base model a hallucination habit for DPO to remove.
    Columns: `images`, `prompt`, `completion`, `objects`, `is_noisy`.
    """
    _check_fraction("noisy_fraction", noisy_fraction)
    num_rows = len(dataset_split)
    noisy_rows = set(random.Random(f"sft-{seed}").sample(range(num_rows), round(noisy_fraction * num_rows)))

    def to_row(caption_text: str, noisy_text: str, index: int) -> dict:
        is_noisy = index in noisy_rows
        return {
            "prompt": user_prompt(prompt_text),
            "completion": assistant_message(noisy_text if is_noisy else caption_text),
            "is_noisy": is_noisy,
        }

    rows = dataset_split.map(to_row, input_columns=["caption", "noisy_caption"], with_indices=True)
    return rows.select_columns(["images", "prompt", "completion", "objects", "is_noisy"])
