"""Object repetition on hand-made captions; every expected number is worked out in a comment."""

import pytest

from vlmdpo.eval import ObjectVocabulary, caption_repetition, chair, object_repetition

VOCABULARY = {
    "dog": ["puppy"],
    "cat": ["kitten"],
    "hot dog": [],
    "yellow square": [],
    "red circle": [],
}


@pytest.fixture(scope="module")
def vocabulary():
    return ObjectVocabulary.from_dict(VOCABULARY)


@pytest.mark.parametrize(
    "caption, mentions, repeated",
    [
        ("A dog and a cat.", ("dog", "cat"), ()),  # two objects, once each
        ("a large yellow square and a large yellow square",  # the same form twice: one repeat
         ("yellow square", "yellow square"), ("yellow square",)),
        ("two red circles", ("red circle",), ()),  # a plural is one mention
        ("a puppy chases a dog", ("dog", "dog"), ("dog",)),  # a synonym names the same object
        ("a red circle and two red circles", ("red circle", "red circle"), ("red circle",)),  # singular, then plural
        ("a dog, a dog and a dog", ("dog", "dog", "dog"), ("dog", "dog")),  # each mention after the first
        ("a dog eats a hot dog", ("dog", "hot dog"), ()),  # "hot dog" is another object, not a second dog
        ("a cat with no other cat", ("cat",), ()),  # the negated cat is no claim, so no repeat
        ("", (), ()),
        ("an empty room", (), ()),  # words, but no object
    ],
)
def test_caption_repetition(vocabulary, caption, mentions, repeated):
    result = caption_repetition(caption, vocabulary)
    assert (result.mentions, result.repeated) == (mentions, repeated)


def test_repetition_worked_example(vocabulary):
    captions = [
        "A dog and a cat.",  # 2 mentions, 0 repeats
        "a large yellow square and a large yellow square",  # 2 mentions, 1 repeat
        "two red circles",  # 1 mention, 0 repeats
        "A puppy chases a dog, a dog!",  # 3 mentions (all dog), 2 repeats
        "",  # 0 mentions
        "an empty room",  # 0 mentions
    ]
    result = object_repetition(captions, vocabulary)
    # repetition = repeats / mentions = (0 + 1 + 0 + 2 + 0 + 0) / (2 + 2 + 1 + 3 + 0 + 0) = 3/8
    # repetition_s = captions with a repeat / captions = 2/6 (the object-free captions count, with no repeat)
    assert result.repetition == pytest.approx(3 / 8)
    assert result.repetition_s == pytest.approx(1 / 3)
    assert result.as_dict() == {"repetition": result.repetition, "repetition_s": result.repetition_s}
    assert [len(c.repeated) for c in result.captions] == [0, 1, 0, 2, 0, 0]
    # CHAIR's claimed objects are the same mentions, each counted once
    truth = [["dog"]] * len(captions)
    assert [c.mentioned for c in chair(captions, truth, vocabulary).captions] == [
        tuple(dict.fromkeys(c.mentions)) for c in result.captions]


def test_no_repeats_is_zero(vocabulary):
    result = object_repetition(["a dog and a cat", "two red circles and a yellow square"], vocabulary)
    assert result.as_dict() == {"repetition": 0.0, "repetition_s": 0.0}


def test_zero_denominators_are_zero(vocabulary):
    # No captions: both ratios are 0/0 -> 0.0.
    assert object_repetition([], vocabulary).as_dict() == {"repetition": 0.0, "repetition_s": 0.0}
    # Captions without objects: repetition is 0/0 -> 0.0; repetition_s is 0/2.
    result = object_repetition(["", "an empty room"], vocabulary)
    assert result.as_dict() == {"repetition": 0.0, "repetition_s": 0.0}
    assert [(c.mentions, c.repeated) for c in result.captions] == [((), ()), ((), ())]
