"""The imperfect-chosen pair regime (``data_recipes.shapes.habit_pairs``), counted from the caption text with the
CHAIR machinery on a fixed seed: every chosen caption names fewer absent objects than its rejected one, exactly
the stated share of chosen captions hallucinates, and chosen and rejected have the same lengths."""

import pytest

from data_recipes.shapes import SHAPES_VOCABULARY, build_shapes_dataset
from data_recipes.shapes.captions import POPULARITY
from data_recipes.shapes.habit_pairs import habit_pairs
from vlmdpo.data.rows import response_text
from vlmdpo.eval import ObjectVocabulary, chair_caption


@pytest.fixture(scope="module")
def split():
    return build_shapes_dataset(seed=3, num_train=80, num_test=0, image_size=32)["train"]


@pytest.mark.parametrize("rate", [0.0, 0.35, 0.6, 1.0])
def test_habit_pairs_have_the_stated_properties(split, rate):
    vocabulary = ObjectVocabulary.from_dict(SHAPES_VOCABULARY)
    pairs = habit_pairs(split, chosen_hallucination_rate=rate, seed=5)
    assert len(pairs) == len(split)
    hallucinating = 0
    for row in pairs:
        chosen, rejected = response_text(row["chosen"]), response_text(row["rejected"])
        chosen_chair = chair_caption(chosen, row["objects"], vocabulary)
        rejected_chair = chair_caption(rejected, row["objects"], vocabulary)
        assert len(chosen_chair.hallucinated) < len(rejected_chair.hallucinated)
        assert len(rejected_chair.hallucinated) == len(chosen_chair.hallucinated) + 1
        assert (row["chosen_absent"], row["rejected_absent"]) == (len(chosen_chair.hallucinated),
                                                                  len(rejected_chair.hallucinated))
        assert len(chosen.split()) == len(rejected.split())  # same object count, same grammar: same length
        assert not chosen_chair.missed  # the chosen caption names every true object
        hallucinating += bool(chosen_chair.hallucinated)
    assert hallucinating == round(rate * len(split))


def test_the_added_objects_are_the_habit_of_noisy_captions(split):
    """Absent objects are drawn by popularity, as noisy pretraining captions add them: the most popular
    (colour, shape) is the most added one."""
    vocabulary = ObjectVocabulary.from_dict(SHAPES_VOCABULARY)
    pairs = habit_pairs(split, chosen_hallucination_rate=1.0, seed=5)
    counts = {}
    for row in pairs:
        for name in chair_caption(response_text(row["rejected"]), row["objects"], vocabulary).hallucinated:
            counts[name] = counts.get(name, 0) + 1
    top = " ".join(POPULARITY[0])
    assert max(counts, key=counts.get) == vocabulary.canonical(top)


def test_rows_are_fixed_by_the_seed(split):
    whole = habit_pairs(split, 0.5, seed=2)
    again = habit_pairs(split, 0.5, seed=2)
    assert whole["chosen"] == again["chosen"] and whole["rejected"] == again["rejected"]
    assert habit_pairs(split, 0.5, seed=3)["rejected"] != whole["rejected"]
    with pytest.raises(ValueError, match="must lie in"):
        habit_pairs(split, 1.5)
