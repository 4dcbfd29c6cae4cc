"""Question rows of the shapes-world demo, beyond captions: the base model's yes/no and attribute questions
(``base_sft_rows`` puts them together with the captions) and the yes/no preference pairs of the alignment run.
Prompts are plain strings worded as POPE words them, so what the base learns is what POPE asks.
"""

from __future__ import annotations

import datasets

from vlmdpo.data import response_text


def yes_no_rows(split: datasets.Dataset) -> datasets.Dataset:
    """One "yes" and one "no" question per image, worded as POPE words them: ``images``, ``prompt`` and
    ``completion`` ("Yes." or "No."), plain strings."""
    from vlmdpo.eval.pope import pope_question_text

    def to_qa(batch):
        out = {"images": [], "prompt": [], "completion": []}
        for images, questions, answers in zip(batch["images"], batch["questions"], batch["answers"]):
            pairs = list(zip(questions, answers))
            pairs = [next(p for p in pairs if p[1] == label) for label in ("yes", "no")
                     if any(p[1] == label for p in pairs)]
            for text, answer in pairs:
                name = text.removeprefix("is there a ").removesuffix(" in the image?")
                out["images"].append(images)
                out["prompt"].append(pope_question_text(name))
                out["completion"].append(answer.capitalize() + ".")
        return out

    return split.map(to_qa, batched=True, remove_columns=split.column_names)


def caption_questions(captions: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Yes/no rows written from noisy captions, as VQA data generated from web captions is: each noisy
    caption's extra object is asked about and answered "Yes." (the caption says it is there), and, to keep
    the answers balanced, one more absent object is asked about and answered "No.". ``captions`` are
    ``caption_sft_rows`` rows; a row's questions depend only on (seed, row index)."""
    import random

    from data_recipes.shapes import SHAPES_VOCABULARY, mentioned_objects
    from vlmdpo.eval.pope import pope_question_text

    def to_qa(batch, indices):
        out = {"images": [], "prompt": [], "completion": []}
        for images, completion, noisy, objects, index in zip(
                batch["images"], batch["completion"], batch["is_noisy"], batch["objects"], indices):
            if not noisy:
                continue
            extra = next(name for name in mentioned_objects(response_text(completion)) if name not in objects)
            absent = [name for name in SHAPES_VOCABULARY if name not in objects and name != extra]
            other = random.Random(f"caption-questions-{seed}-{index}").choice(absent)
            for name, answer in ((extra, "Yes."), (other, "No.")):
                out["images"].append(images)
                out["prompt"].append(pope_question_text(name))
                out["completion"].append(answer)
        return out

    return captions.map(to_qa, batched=True, with_indices=True, remove_columns=captions.column_names)


def attribute_rows(split: datasets.Dataset, seed: int) -> datasets.Dataset:
    """One attribute question per image ("What shape is the red object?" -> "A circle.", or "What colour is
    the square?" -> "Red."; ``data_recipes.shapes.attribute_question``), plain strings. Row i's question
    depends only on (seed, i)."""
    import random

    from data_recipes.shapes import attribute_question
    from data_recipes.shapes.world import Scene

    def to_qa(batch, indices):
        out = {"images": [], "prompt": [], "completion": []}
        for images, scene_json, index in zip(batch["images"], batch["scene"], indices):
            text, answer = attribute_question(Scene.from_json(scene_json), random.Random(f"attribute-{seed}-{index}"))
            out["images"].append(images)
            out["prompt"].append(text[0].upper() + text[1:])
            out["completion"].append(answer)
        return out

    return split.map(to_qa, batched=True, with_indices=True, remove_columns=split.column_names)


def base_sft_rows(train: datasets.Dataset, noisy_fraction: float, seed: int,
                  noisy_questions: bool = False, attribute_questions: bool = False) -> datasets.Dataset:
    """Supervised rows of the base model: every image captioned (a share with an extra, absent object)
    and asked one yes and one no question (``yes_no_rows``), plus, with ``noisy_questions``, the questions
    written from the noisy captions (``caption_questions``) and, with ``attribute_questions``, one attribute
    question per image (``attribute_rows``)."""
    from data_recipes.shapes import caption_sft_rows

    captions = caption_sft_rows(train, noisy_fraction=noisy_fraction, seed=seed)
    qa = yes_no_rows(train)
    if noisy_questions:
        qa = datasets.concatenate_datasets([qa, caption_questions(captions, seed).cast(qa.features)])
    if attribute_questions:
        qa = datasets.concatenate_datasets([qa, attribute_rows(train, seed).cast(qa.features)])
    captions = captions.select_columns(["images", "prompt", "completion"])
    captions = captions.map(lambda row: {"prompt": response_text(row["prompt"]),
                                         "completion": response_text(row["completion"])})
    rows = datasets.concatenate_datasets([captions.cast(qa.features), qa])
    return rows.shuffle(seed=seed)


YES_NO_NEGATIVES = ("popular", "same_colour")
"""Kinds of absent object a yes/no pair can ask about (see ``yes_no_pairs``)."""


def yes_no_pairs(split: datasets.Dataset, seed: int, negatives: str = "popular") -> datasets.Dataset:
    """Per image, a question about a present object ("Yes." chosen over "No.") and one about an absent object
    ("No." chosen). POPE wording; plain strings. Row i's questions depend only on (seed, i).

    ``negatives="popular"`` draws the absent object by popularity: the objects noisy captions add most often,
    which a model trained on them says yes to. ``"same_colour"`` asks about an absent object that shares its
    colour with a present one (a red square of an image with a red circle; popular where there is none): the
    error of a base that answers from colour alone (see ``yes_no_probe``). On such a base (seed 0) a LoRA
    adapter did not learn to tell them from present objects in 400 steps, nor in 1000 on yes/no pairs alone,
    and learned to say no to present objects instead (POPE F1 0.848 -> 0.830, and -> 0.65 with yes/no pairs
    alone); popular negatives gave 0.840."""
    import random

    if negatives not in YES_NO_NEGATIVES:
        raise ValueError(f"negatives={negatives!r}; choose one of {YES_NO_NEGATIVES}")
    from data_recipes.shapes.captions import popular_absent_object
    from data_recipes.shapes.world import Scene
    from vlmdpo.eval.pope import pope_question_text

    def to_pairs(batch, indices):
        out = {"images": [], "prompt": [], "chosen": [], "rejected": []}
        for images, scene_json, index in zip(batch["images"], batch["scene"], indices):
            scene, rng = Scene.from_json(scene_json), random.Random(f"yes-no-{seed}-{index}")
            present = rng.choice(scene.objects)
            absent = popular_absent_object(scene, rng).name
            if negatives == "same_colour":
                sharing = [f"{c} {s}" for c, s in scene.absent_pairs()
                           if any(o.colour == c for o in scene.objects)]
                absent = rng.choice(sharing) if sharing else absent
            for name, chosen, rejected in ((present.name, "Yes.", "No."), (absent, "No.", "Yes.")):
                out["images"].append(images)
                out["prompt"].append(pope_question_text(name))
                out["chosen"].append(chosen)
                out["rejected"].append(rejected)
        return out

    return split.map(to_pairs, batched=True, with_indices=True, remove_columns=split.column_names)
