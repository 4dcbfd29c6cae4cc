"""CHAIR, POPE and object matching on hand-made captions; every expected number is worked out in a comment."""

import json
from collections import Counter

import pytest

from vlmdpo.eval import (
    Mention,
    ObjectVocabulary,
    build_pope_questions,
    chair,
    parse_pope_answer,
    pluralize,
    pope_metrics,
    pope_question_text,
    tokenize,
)

SMALL = {
    "dog": ["dog", "puppy"],
    "cat": ["cat", "kitten"],
    "hot dog": ["hot dog"],
    "person": ["person", "man", "woman", "people"],
    "frisbee": ["frisbee"],
    "bench": ["bench"],
}
SHAPES = {"red circle": ["red circle"], "blue square": ["blue square"], "green triangle": ["green triangle"]}


@pytest.fixture(scope="module")
def small():
    return ObjectVocabulary.from_dict(SMALL)


@pytest.fixture(scope="module")
def coco():
    return ObjectVocabulary.coco()


def claims(vocabulary, text):
    return [(m.canonical, m.negated) for m in vocabulary.find_mentions(text)]


# --- words and plurals ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "word, plural",
    [("dog", "dogs"), ("bus", "buses"), ("box", "boxes"), ("sandwich", "sandwiches"), ("puppy", "puppies"),
     ("toy", "toys"), ("person", "people"), ("mouse", "mice"), ("goose", "geese"), ("knife", "knives"),
     ("sheep", "sheep"), ("child", "children"), ("woman", "women"), ("policeman", "policemen"),
     ("human", "humans")],
)
def test_pluralize(word, plural):
    assert pluralize(word) == plural


def test_tokenize_lowercases_strips_punctuation_and_possessives():
    assert tokenize("The Dog's HOT-DOG, isn't it?") == ["the", "dog", "hot", "dog", "isn't", "it"]


# --- mentions ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("a puppy", [("dog", False)]),                     # synonym
        ("two dogs and three kittens", [("dog", False), ("cat", False)]),  # plurals of forms
        ("a man eats a hot dog", [("person", False), ("hot dog", False)]),  # "hot dog" is no dog
        ("people", [("person", False)]),
        ("there is no dog", [("dog", True)]),
        ("a bench without a dog", [("bench", False), ("dog", True)]),
        ("not a dog", [("dog", True)]),
        ("no cats or dogs", [("cat", True), ("dog", True)]),  # scope runs over "or"
        ("no cat, but a dog", [("cat", True), ("dog", False)]),  # comma closes the scope
        ("there isn't a cat but a dog", [("cat", True), ("dog", False)]),  # "but" closes it
        ("The dog is not sleeping.", [("dog", False)]),  # the cue only reaches forward
        ("There is no dog. A cat sleeps.", [("dog", True), ("cat", False)]),
        ("I don\u2019t see a cat", [("cat", True)]),  # curly apostrophe
        ("", []),
    ],
)
def test_find_mentions(small, text, expected):
    assert claims(small, text) == expected


def test_mention_keeps_surface_text_and_span(small):
    text = "Two Puppies and a HOT-DOG."
    assert small.find_mentions(text) == [
        Mention("dog", "Puppies", (4, 11), False),
        Mention("hot dog", "HOT-DOG", (18, 25), False),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a teddy bear on a bed", ["teddy bear", "bed"]),
        ("a dining table", ["dining table"]),  # not also "table"
        ("a baby elephant", ["elephant"]),  # "baby" alone would be a person
        ("baby carrots", ["carrot"]),
        ("a train on the train tracks", ["train"]),  # "train tracks" is ignored
        ("a catcher's mitt", ["baseball glove"]),
        ("a computer mouse next to a laptop", ["mouse", "laptop"]),
        ("two policemen and their geese", ["person", "bird"]),
        ("a microwave oven and three knives", ["microwave", "knife"]),
    ],
)
def test_coco_vocabulary(coco, text, expected):
    assert [m.canonical for m in coco.find_mentions(text)] == expected


def test_coco_has_the_80_categories_each_its_own_form(coco):
    assert len(coco) == 80 and len(set(coco.names)) == 80
    assert all(coco.canonical(name) == name for name in coco.names)
    assert {"person", "hot dog", "teddy bear", "dining table", "hair drier", "tv"} <= set(coco.names)


def test_shapes_vocabulary_matches_inside_modifiers_and_plurals():
    shapes = ObjectVocabulary.from_dict(SHAPES)
    text = "a large red circle and a small blue square"
    assert [(m.canonical, m.surface) for m in shapes.find_mentions(text)] == [
        ("red circle", "red circle"),
        ("blue square", "blue square"),
    ]
    assert claims(shapes, "two red circles") == [("red circle", False)]
    assert claims(shapes, "a red square and a blue circle") == []  # colour and shape must agree
    assert claims(shapes, "no green triangle") == [("green triangle", True)]


def test_canonical_and_membership(small):
    assert small.canonical("Puppies") == "dog"
    assert "kitten" in small and "giraffe" not in small
    with pytest.raises(ValueError, match="giraffe"):
        small.canonical("giraffe")


def test_surface_form_shared_by_two_objects_is_rejected():
    with pytest.raises(ValueError, match="both"):
        ObjectVocabulary.from_dict({"dog": ["pet"], "cat": ["pet"]})


def test_explicit_form_wins_over_generated_plural():
    vocabulary = ObjectVocabulary.from_dict({"wine glass": ["glass"], "eyeglasses": ["glasses"]})
    assert vocabulary.canonical("glasses") == "eyeglasses"
    assert vocabulary.canonical("glass") == "wine glass"


def test_from_json_reads_plain_and_structured_files(tmp_path):
    plain, structured = tmp_path / "plain.json", tmp_path / "structured.json"
    plain.write_text(json.dumps(SMALL))
    structured.write_text(json.dumps({"objects": SMALL, "ignore": ["dog park"]}))
    assert ObjectVocabulary.from_json(plain).names == tuple(SMALL)
    assert claims(ObjectVocabulary.from_json(plain), "a dog park") == [("dog", False)]
    assert claims(ObjectVocabulary.from_json(structured), "a dog park") == []


# --- CHAIR ---------------------------------------------------------------------------------------

def test_chair_worked_example(small):
    captions = [
        "A puppy catches a frisbee while two dogs watch.",  # claims {dog, frisbee}; none hallucinated
        "A man eats a hot dog on a bench.",  # claims {person, hot dog, bench}; bench hallucinated
        "There is no dog in the image.",  # claims {} (negated); misses cat
        "",  # claims {}; misses bench
        "Two cats and a dog; the dog chases the cats.",  # claims {cat, dog}, dog once; dog hallucinated
    ]
    ground_truth = [["dog", "frisbee"], ["person", "hot dog"], ["kitten"], ["bench"], ["cat"]]
    result = chair(captions, ground_truth, small)
    # CHAIR_i = hallucinated / claimed = (0 + 1 + 0 + 0 + 1) / (2 + 3 + 0 + 0 + 2) = 2/7
    # CHAIR_s = captions with a hallucination / captions = 2/5
    # recall = recalled / ground truth = (2 + 2 + 0 + 0 + 1) / (2 + 2 + 1 + 1 + 1) = 5/7
    assert result.chair_i == pytest.approx(2 / 7)
    assert result.chair_s == pytest.approx(2 / 5)
    assert result.recall == pytest.approx(5 / 7)
    assert result.as_dict() == {"chair_i": result.chair_i, "chair_s": result.chair_s, "recall": result.recall}

    first, second, third, fourth, fifth = result.captions
    assert first.mentioned == ("dog", "frisbee") and first.hallucinated == () and first.missed == ()
    assert second.mentioned == ("person", "hot dog", "bench") and second.hallucinated == ("bench",)
    assert third.mentioned == () and third.missed == ("cat",) and third.ground_truth == ("cat",)
    assert fourth.mentioned == () and fourth.missed == ("bench",)
    assert fifth.mentioned == ("cat", "dog") and fifth.hallucinated == ("dog",)


def test_chair_on_shapes():
    shapes = ObjectVocabulary.from_dict(SHAPES)
    result = chair(["a large red circle and a small blue square"], [["red circle"]], shapes)
    # claims {red circle, blue square}, blue square hallucinated: CHAIR_i = 1/2, CHAIR_s = 1/1, recall = 1/1
    assert (result.chair_i, result.chair_s, result.recall) == (0.5, 1.0, 1.0)


def test_chair_zero_denominators_are_zero(small):
    assert chair([], [], small).as_dict() == {"chair_i": 0.0, "chair_s": 0.0, "recall": 0.0}
    # An empty caption claims nothing: no hallucination, and recall 0 of 1.
    assert chair([""], [["dog"]], small).as_dict() == {"chair_i": 0.0, "chair_s": 0.0, "recall": 0.0}


def test_chair_rejects_bad_inputs(small):
    with pytest.raises(ValueError, match="one list of objects per caption"):
        chair(["a dog"], [], small)
    with pytest.raises(ValueError, match="giraffe"):
        chair(["a dog"], [["giraffe"]], small)


# --- POPE answers and metrics --------------------------------------------------------------------

@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("No, there is not.", "no"),
        ("Yes.", "yes"),
        ("There is a dog.", "yes"),
        ("There is no dog in the image", "no"),
        ("Yes, there is a dog. No other animals are visible.", "yes"),  # first sentence only
        ("I don't see one.", "yes"),  # the reference does not read contractions as negations
        ("NO!", "no"),
        ("", "yes"),
    ],
)
def test_parse_pope_answer(answer, parsed):
    assert parse_pope_answer(answer) == parsed


def test_pope_metrics_confusion_matrix():
    labels = ["yes"] * 4 + ["no"] * 4
    predictions = ["yes", "yes", "yes", "no"] + ["yes", "yes", "no", "no"]  # tp 3, fn 1, fp 2, tn 2
    metrics = pope_metrics(predictions, labels)
    assert (metrics["tp"], metrics["fn"], metrics["fp"], metrics["tn"]) == (3, 1, 2, 2)
    assert metrics["accuracy"] == pytest.approx(5 / 8)  # (tp + tn) / 8
    assert metrics["precision"] == pytest.approx(3 / 5)  # tp / (tp + fp)
    assert metrics["recall"] == pytest.approx(3 / 4)  # tp / (tp + fn)
    assert metrics["f1"] == pytest.approx(2 / 3)  # 2 * 0.6 * 0.75 / 1.35
    assert metrics["yes_ratio"] == pytest.approx(5 / 8)  # (tp + fp) / 8


def test_pope_metrics_all_no_and_bad_values():
    metrics = pope_metrics(["no", "no"], ["yes", "no"])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="parse_pope_answer"):
        pope_metrics(["Yes, there is."], ["yes"])


# --- POPE questions ------------------------------------------------------------------------------

ANNOTATIONS = [
    ["person", "dog", "frisbee"],
    ["person", "car"],
    ["dog", "cat"],
    ["person", "dog", "bench"],
]
POOL = ["person", "dog", "frisbee", "car", "cat", "bench", "kite", "boat"]


def negatives_by_image(questions):
    found = {}
    for q in questions:
        if q.label == "no":
            found.setdefault(q.image_index, []).append(q.object)
    return found


@pytest.mark.parametrize("strategy", ["random", "popular", "adversarial"])
def test_pope_questions_are_balanced_and_negatives_absent(strategy):
    questions = build_pope_questions(ANNOTATIONS, POOL, strategy=strategy, seed=1)
    assert Counter(q.label for q in questions) == {"yes": 10, "no": 10}  # 3 + 2 + 2 + 3 positives
    assert [q.label for q in questions] == ["yes", "no"] * 10
    for image, negatives in negatives_by_image(questions).items():
        assert not set(negatives) & set(ANNOTATIONS[image])
        assert set(negatives) <= set(POOL) and len(set(negatives)) == len(negatives)
    for q in questions:
        assert (q.object in ANNOTATIONS[q.image_index]) == (q.label == "yes")
        assert q.question == pope_question_text(q.object)
    assert questions == build_pope_questions(ANNOTATIONS, POOL, strategy=strategy, seed=1)


def test_popular_negatives_are_the_most_frequent_absent_objects():
    # Frequencies: person 3, dog 3, then bench, car, cat, frisbee 1 each (ties by name); kite, boat 0.
    negatives = negatives_by_image(build_pope_questions(ANNOTATIONS, POOL, strategy="popular"))
    assert negatives == {
        0: ["bench", "car", "cat"],  # image has person, dog, frisbee
        1: ["dog", "bench"],  # image has person, car
        2: ["person", "bench"],  # image has dog, cat
        3: ["car", "cat", "frisbee"],  # image has person, dog, bench
    }


def test_adversarial_negatives_co_occur_with_each_positive():
    # Co-occurrence: person-dog 2; person-frisbee, person-car, person-bench, dog-frisbee, dog-cat, dog-bench 1.
    negatives = negatives_by_image(build_pope_questions(ANNOTATIONS, POOL, strategy="adversarial"))
    # Image 0: person -> dog present, then bench/car/frisbee tie -> bench; dog -> person present, bench used,
    # then cat; frisbee -> person and dog present -> random fallback.
    assert negatives[0][:2] == ["bench", "cat"]
    assert negatives[1][0] == "dog"  # person's top partner, absent from image 1
    assert negatives[2][0] == "person"  # dog's top partner, absent from image 2
    assert negatives[3][:2] == ["car", "cat"]


def test_pope_questions_edge_cases():
    # No objects: no questions. Pool exhausted after one negative: the second positive is dropped.
    questions = build_pope_questions([[], ["a", "b"]], ["a", "b", "c"])
    assert [(q.image_index, q.object, q.label) for q in questions] == [(1, "a", "yes"), (1, "c", "no")]
    one = build_pope_questions(ANNOTATIONS, POOL, num_negatives_per_image=1)
    assert [q.object for q in one if q.label == "yes"] == ["person", "person", "dog", "person"]
    with pytest.raises(ValueError, match="strategy"):
        build_pope_questions(ANNOTATIONS, POOL, strategy="hardest")


def test_pope_question_text_article():
    assert pope_question_text("dog") == "Is there a dog in the image?"
    assert pope_question_text("apple") == "Is there an apple in the image?"


def test_pope_f1_change_is_paired_over_images_and_worked_out_by_hand():
    from vlmdpo.eval.pope import pope_f1_change

    def record(index, obj, label, prediction):
        return {"strategy": "random", "index": index, "object": obj, "label": label, "prediction": prediction}

    base = [record(0, "a", "yes", "yes"), record(0, "b", "no", "no"),
            record(1, "a", "yes", "yes"), record(1, "b", "no", "no")]  # F1 1
    other = base[:3] + [record(1, "b", "no", "yes")]  # one false yes: F1 = 2*2 / (2*2 + 1) = 0.8
    assert pope_f1_change(base, base) == {"change": 0.0, "low": 0.0, "high": 0.0}
    result = pope_f1_change(base, other, num_resamples=500)
    assert result["change"] == pytest.approx(-0.2)
    # resamples: image 0 twice (change 0), image 1 twice (F1 4/6: -1/3), one of each (-0.2)
    assert -1 / 3 - 1e-9 <= result["low"] < result["high"] <= 0.0
    with pytest.raises(ValueError, match="different questions"):
        pope_f1_change(base, other[:3])


def test_chair_i_change_is_a_ratio_of_sums_with_a_paired_interval():
    from vlmdpo.eval.chair import chair_i_change

    def records(hallucinated):  # image i mentions 2 objects, of which hallucinated[i] are not there
        return [{"index": i, "mentioned": ["a", "b"], "hallucinated": ["b"] * h} for i, h in enumerate(hallucinated)]

    base, better = records([1, 1, 0, 0]), records([0, 0, 0, 0])
    # base CHAIR_i = 2 / 8, the other 0 / 8: change -0.25 by hand
    result = chair_i_change(base, better, seed=0)
    assert result["change"] == -0.25
    assert -0.5 <= result["low"] <= result["change"] <= result["high"] <= 0.0
    assert chair_i_change(base, base) == {"change": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="different images"):
        chair_i_change(base, better[:3])
