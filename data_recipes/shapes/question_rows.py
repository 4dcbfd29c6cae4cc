"""Question rows of the shapes-world demo, beyond captions: the base model's yes/no questions (``base_sft_rows``
puts them together with the captions) and the yes/no preference pairs of the alignment run.
Prompts are plain strings worded as POPE words them, so what the base learns is what POPE asks.
"""

from __future__ import annotations

import datasets

from vlmdpo.data.rows import response_text


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


def base_sft_rows(train: datasets.Dataset, noisy_fraction: float, seed: int) -> datasets.Dataset:
    """Supervised rows of the base model: every image captioned (a share with an extra, absent object)
    and asked one yes and one no question (``yes_no_rows``), shuffled."""
    from data_recipes.shapes import caption_sft_rows

    captions = caption_sft_rows(train, noisy_fraction=noisy_fraction, seed=seed)
    qa = yes_no_rows(train)
    captions = captions.select_columns(["images", "prompt", "completion"])
    captions = captions.map(lambda row: {"prompt": response_text(row["prompt"]),
                                         "completion": response_text(row["completion"])})
    rows = datasets.concatenate_datasets([captions.cast(qa.features), qa])
    return rows.shuffle(seed=seed)


def yes_no_pairs(split: datasets.Dataset, seed: int, binding: bool = False) -> datasets.Dataset:
    """Per image, a question about a present object ("Yes." chosen over "No.") and one about an absent object
    ("No." chosen). POPE wording; plain strings. Row i's questions depend only on (seed, i).

    The absent object is drawn by popularity: the objects noisy captions add most often, which a model trained
    on them says yes to. With ``binding``, where the scene allows, a third question asks about an absent object
    whose colour is in the image on another shape (answering from colour alone says yes to it), and a fourth
    about another present object (the same one when it is alone), so that yes and no stay balanced."""
    import random

    from data_recipes.shapes.captions import popular_absent_object
    from data_recipes.shapes.world import Scene
    from vlmdpo.eval.pope import pope_question_text

    def to_pairs(batch, indices):
        out = {"images": [], "prompt": [], "chosen": [], "rejected": []}
        for images, scene_json, index in zip(batch["images"], batch["scene"], indices):
            scene, rng = Scene.from_json(scene_json), random.Random(f"yes-no-{seed}-{index}")
            present = rng.choice(scene.objects)
            questions = [(present.name, "Yes.", "No."), (popular_absent_object(scene, rng).name, "No.", "Yes.")]
            colours = {o.colour for o in scene.objects}
            unbound = [f"{colour} {shape}" for colour, shape in scene.absent_pairs()
                       if colour in colours and f"{colour} {shape}" != questions[1][0]]
            if binding and unbound:  # with one more "yes" question, so that yes and no stay balanced
                others = [o for o in scene.objects if o is not present] or [present]
                questions += [(rng.choice(unbound), "No.", "Yes."), (rng.choice(others).name, "Yes.", "No.")]
            for name, chosen, rejected in questions:
                out["images"].append(images)
                out["prompt"].append(pope_question_text(name))
                out["chosen"].append(chosen)
                out["rejected"].append(rejected)
        return out

    return split.map(to_pairs, batched=True, with_indices=True, remove_columns=split.column_names)
