"""Preference pairs whose chosen caption is better than the rejected one but not right: the regime of real
preference data, where both answers come from models with the same habits and the chosen one simply has less
of them (RLAIF-V's chosen is the model's own less-hallucinated answer; VLFeedback ranks scored samples).

The habit is the one the base model learned from noisy captions: naming a popular absent object
(``popular_absent_object``, Zipf weights over ``POPULARITY``). For each alignment image:

- chosen: the true caption, and for an exact share ``chosen_hallucination_rate`` of the rows, one popular absent
  object appended at the end, as a model with the habit would add it;
- rejected: the chosen caption with one of its true objects (drawn at random) dropped and one more popular
  absent object appended at the end.

So the rejected caption always names exactly one more absent object and one fewer true object than the chosen
one, and both name the same number of objects in the same grammar ("a <size> <colour> <shape>", four words
each): length cannot tell them apart. Ground truth ranks every pair, and ``habit_pair_stats`` counts what the
rows hold.
"""

from __future__ import annotations

import random

import datasets

from .build import assistant_message, user_prompt
from .captions import DESCRIBE_PROMPT, describe, popular_absent_object
from .world import Scene


def _habit_pair(scene: Scene, rng: random.Random, hallucinating: bool) -> tuple[str, str, int, int]:
    """``(chosen, rejected, absent objects named by chosen, by rejected)`` for one scene."""
    objects = list(scene.objects)
    chosen = list(objects)
    absent_in_chosen = 0
    if hallucinating:
        chosen.append(popular_absent_object(scene, rng))
        absent_in_chosen = 1
    taken = {(obj.colour, obj.shape) for obj in chosen}
    dropped = rng.randrange(len(objects))
    rejected = [obj for i, obj in enumerate(chosen) if i != dropped]
    for _ in range(100):  # one more popular absent object, not one the chosen caption already names
        extra = popular_absent_object(scene, rng)
        if (extra.colour, extra.shape) not in taken:
            break
    else:
        raise ValueError(f"scene {scene.names} has no second absent object to add")
    rejected.append(extra)
    return describe(chosen), describe(rejected), absent_in_chosen, absent_in_chosen + 1


def habit_pairs(split: datasets.Dataset, chosen_hallucination_rate: float = 0.6, seed: int = 0,
                prompt_text: str = DESCRIBE_PROMPT) -> datasets.Dataset:
    """Conversational preference rows (``images``, ``prompt``, ``chosen``, ``rejected``, ``objects``) of the
    imperfect-chosen regime above, plus ``chosen_absent`` and ``rejected_absent``: how many absent objects each
    names. Exactly ``round(chosen_hallucination_rate * len(split))`` chosen captions hallucinate, the rows
    drawn from ``seed``; row i's objects depend only on (seed, i)."""
    if not 0.0 <= chosen_hallucination_rate <= 1.0:
        raise ValueError(f"chosen_hallucination_rate={chosen_hallucination_rate} must lie in [0, 1]")
    hallucinating = set(random.Random(f"habit-rows-{seed}").sample(
        range(len(split)), round(chosen_hallucination_rate * len(split))))

    def to_pair(scene_json: str, index: int) -> dict:
        rng = random.Random(f"habit-{seed}-{index}")
        chosen, rejected, chosen_absent, rejected_absent = _habit_pair(Scene.from_json(scene_json), rng,
                                                                       index in hallucinating)
        return {"prompt": user_prompt(prompt_text), "chosen": assistant_message(chosen),
                "rejected": assistant_message(rejected), "chosen_absent": chosen_absent,
                "rejected_absent": rejected_absent}

    pairs = split.map(to_pair, input_columns=["scene"], with_indices=True)
    return pairs.select_columns(["images", "prompt", "chosen", "rejected", "objects", "chosen_absent",
                                 "rejected_absent"])
