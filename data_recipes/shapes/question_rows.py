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


def yes_no_pairs(split: datasets.Dataset, seed: int, binding: bool = False,
                 objects: str = "popular") -> datasets.Dataset:
    """Per image, a question about a present object ("Yes." chosen over "No.") and one about an absent object
    ("No." chosen). POPE wording; plain strings. Row i's questions depend only on (seed, i).

    The absent object is drawn by popularity: the objects noisy captions add most often, which a model trained
    on them says yes to. The present one is too with ``objects="popular"`` (``"uniform"``: any present object),
    so that popularity alone does not answer the question (``uncertain_yes_no_pairs`` asks the model instead).
    With ``binding``, where the scene allows, a third question asks about an absent object whose colour is in
    the image on another shape (answering from colour alone says yes to it), and a fourth about another present
    object (the same one when it is alone), so that yes and no stay balanced."""
    import random

    from data_recipes.shapes.captions import popular_absent_object, popular_present_object
    from data_recipes.shapes.world import Scene
    from vlmdpo.eval.pope import pope_question_text

    def to_pairs(batch, indices):
        out = {"images": [], "prompt": [], "chosen": [], "rejected": []}
        for images, scene_json, index in zip(batch["images"], batch["scene"], indices):
            scene, rng = Scene.from_json(scene_json), random.Random(f"yes-no-{seed}-{index}")
            shown = popular_present_object(scene, rng) if objects == "popular" else rng.choice(scene.objects)
            questions = [(shown.name, "Yes.", "No."), (popular_absent_object(scene, rng).name, "No.", "Yes.")]
            colours = {o.colour for o in scene.objects}
            unbound = [f"{colour} {shape}" for colour, shape in scene.absent_pairs()
                       if colour in colours and f"{colour} {shape}" != questions[1][0]]
            if binding and unbound:  # with one more "yes" question, so that yes and no stay balanced
                others = [o for o in scene.objects if o is not shown] or [shown]
                questions += [(rng.choice(unbound), "No.", "Yes."), (rng.choice(others).name, "Yes.", "No.")]
            for name, chosen, rejected in questions:
                out["images"].append(images)
                out["prompt"].append(pope_question_text(name))
                out["chosen"].append(chosen)
                out["rejected"].append(rejected)
        return out

    return split.map(to_pairs, batched=True, with_indices=True, remove_columns=split.column_names)


def uncertain_yes_no_pairs(model, processor, split: datasets.Dataset, *, batch_size: int = 64,
                           progress: bool = True) -> datasets.Dataset:
    """Per image, the present object and the absent one whose true answer ``model`` holds least firmly: the
    smallest log-prob margin of the true answer ("Yes." / "No.") over the other, every (colour, shape) of the
    world asked. These are the answers a little drift in training flips; pairs on them hold them. POPE
    wording, plain strings; ties go to the first object in the world's order."""
    from data_recipes.shapes.world import COLOURS, SHAPES, Scene
    from vlmdpo.data.rows import normalize_row
    from vlmdpo.eval.pope import pope_question_text
    from vlmdpo.eval.preference import preference_fit

    asked, rows = [], []
    for image_index, (images, scene_json) in enumerate(zip(split["images"], split["scene"])):
        scene = Scene.from_json(scene_json)
        for colour in COLOURS:
            for shape in SHAPES:
                present = scene.has(colour, shape)
                truth, other = ("Yes.", "No.") if present else ("No.", "Yes.")
                raw = {"images": images, "prompt": pope_question_text(f"{colour} {shape}"), "chosen": truth,
                       "rejected": other}
                rows.append(normalize_row(raw, len(rows)))
                asked.append((image_index, present, raw))
    fit = preference_fit(model, processor, rows, reference=model, batch_size=batch_size, progress=progress)
    firmest: dict[tuple[int, bool], tuple[float, int]] = {}
    for position, (pair, (image_index, present, _)) in enumerate(zip(fit["per_pair"], asked)):
        margin, key = pair["policy_chosen_logps"] - pair["policy_rejected_logps"], (image_index, present)
        if key not in firmest or margin < firmest[key][0]:
            firmest[key] = (margin, position)
    out = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for image_index in range(len(split)):
        for present in (True, False):
            if (image_index, present) in firmest:
                raw = asked[firmest[image_index, present][1]][2]
                for name in out:
                    out[name].append(raw[name])
    features = datasets.Features({"images": split.features["images"],
                                  **{name: datasets.Value("string") for name in ("prompt", "chosen", "rejected")}})
    return datasets.Dataset.from_dict(out, features=features)
