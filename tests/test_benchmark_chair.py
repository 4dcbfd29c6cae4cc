"""CHAIR / Object HalBench on COCO files in their published layout; numbers worked out by hand in comments."""

import json
from pathlib import Path

import pytest

from vlmdpo.eval.benchmarks import (
    BenchmarkFormatError,
    ChairWords,
    read_chair_questions,
    read_coco_ground_truth,
    score_chair,
)
from vlmdpo.eval.benchmarks.chair import CHAIR_SYNONYMS_PATH, tokenize_like_treebank
from vlmdpo.eval.benchmarks.singular import singularize

FIXTURE = Path(__file__).parent / "fixtures" / "benchmarks" / "chair"

CAPTIONS = {
    # woman -> person, dogs -> dog, "hot dog" is one object (hallucinated): 3 mentions, 1 hallucinated
    1: "A woman walks two dogs past a hot dog stand.",
    # baby bird -> bird (no person), toilet seat -> toilet, teddy bear and chair hallucinated: 4 mentions, 2 wrong
    2: "A baby bird on a toilet seat next to a teddy bear and a chair.",
    # buses -> bus: 1 mention, right
    3: "Two buses wait at the stop.",
}


@pytest.fixture(scope="module")
def truth():
    return read_coco_ground_truth(FIXTURE)


def test_singular_matches_pattern_including_its_quirks():
    expected = {"dogs": "dog", "buses": "bus", "bus": "bu", "glass": "glas", "glasses": "glass", "ties": "ty",
                "knives": "knife", "people": "person", "women": "woman", "policemen": "policeman",
                "children": "child", "sheep": "sheep", "scissors": "scissors", "puppies": "puppy", "skis": "ski",
                "geese": "goose", "mice": "mouse", "couches": "couch", "potatoes": "potato", "wolves": "wolf",
                "cookies": "cookies"}  # Pattern returns an -ie plural unchanged
    assert {word: singularize(word) for word in expected} == expected


def test_tokens_split_like_treebank():
    assert tokenize_like_treebank("A man's dog doesn't eat hot-dogs, OK?") == [
        "a", "man", "'s", "dog", "does", "n't", "eat", "hot-dogs", ",", "ok", "?"]


def test_caption_rules():
    words = ChairWords.coco()
    assert words.objects_in("A baby elephant and a teddy bear") == [("elephant", "elephant"),
                                                                    ("teddy bear", "teddy bear")]
    assert words.objects_in("A passenger jet over train tracks") == [("jet", "airplane")]
    assert words.objects_in("A man with a bow tie, and glasses of wine on a wine glass") == [
        ("man", "person"), ("tie", "tie"), ("wine glass", "wine glass")]
    assert words.objects_in("The seat of the toilet") == [("toilet", "toilet")]  # no chair
    assert words.objects_in("A bus and two dogs and a dog") == [("dog", "dog"), ("dog", "dog")]  # "bu": no bus


def test_ground_truth_from_instances_and_captions(truth):
    # image 1: instances person, dog; captions add bench ("A boy with a dog near a bench")
    # image 2: instances toilet, bird; the caption's "baby bird" is no person
    assert truth == {1: {"person", "dog", "bench"}, 2: {"toilet", "bird"}, 3: {"bus"}}


def test_scores_by_hand(truth):
    result = score_chair(CAPTIONS, truth)
    # mentions 3 + 4 + 1 = 8, hallucinated 1 + 2 + 0 = 3 -> CHAIR_i 3/8
    # captions with a hallucination 2 of 3 -> CHAIR_s 2/3
    # recall: image 1 {person, dog} of 3, image 2 {bird, toilet} of 2, image 3 {bus} of 1 -> 5/6
    assert result.chair_i == 3 / 8
    assert result.chair_s == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(5 / 6)
    assert result.captions[1]["hallucinated"] == [("teddy bear", "teddy bear"), ("chair", "chair")]


def test_repeated_mentions_count_each_time(truth):
    # "cat" twice: 3 mentions (person, cat, cat), 2 hallucinated -> CHAIR_i 2/3
    assert score_chair({1: "A man, a cat and another cat."}, truth).chair_i == pytest.approx(2 / 3)


def official_chair(captions: dict, coco: Path) -> dict:
    """utils/chair.py's rules written out plainly over the synonym list in its own text layout, with the
    tokeniser and singulariser of this package standing in for NLTK and Pattern."""
    objects = json.loads(CHAIR_SYNONYMS_PATH.read_text())["objects"]
    lines = [", ".join([head, *others]) for head, others in objects.items()]
    synonyms = [line.strip().split(", ") for line in lines]
    mscoco_objects, inverse = [], {}
    for synonym in synonyms:
        mscoco_objects.extend(synonym)
        for s in synonym:
            inverse[s] = synonym[0]
    double_words = ["motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
                    "stove top oven", "hot dog", "teddy bear", "home plate", "train track"]
    double = {w: w for w in double_words}
    for animal in ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal",
                   "cub"]:
        double[f"baby {animal}"] = animal
        double[f"adult {animal}"] = animal
    for vehicle in ["jet", "train"]:
        double[f"passenger {vehicle}"] = vehicle
    double["bow tie"], double["toilet seat"], double["wine glas"] = "tie", "toilet", "wine glass"

    def caption_to_words(caption):
        words = [singularize(w) for w in tokenize_like_treebank(caption.lower())]
        merged, i = [], 0
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if pair in double:
                merged.append(double[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [w for w in merged if w != "seat"]
        words = [w for w in merged if w in set(mscoco_objects)]
        return words, [inverse[w] for w in words]

    instances = json.loads((coco / "instances_val2014.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    gt = {}
    for a in instances["annotations"]:
        gt.setdefault(a["image_id"], set()).add(inverse[names[a["category_id"]]])
    for a in json.loads((coco / "captions_val2014.json").read_text())["annotations"]:
        gt.setdefault(a["image_id"], set()).update(caption_to_words(a["caption"])[1])
    caps = hallucinated_caps = hallucinated_words = coco_words = 0
    for image_id, caption in captions.items():
        _, nodes = caption_to_words(caption)
        coco_words += len(nodes)
        wrong = [n for n in nodes if n not in gt[image_id]]
        hallucinated_words += len(wrong)
        caps += 1
        hallucinated_caps += bool(wrong)
    return {"chair_s": hallucinated_caps / caps, "chair_i": hallucinated_words / coco_words}


def test_same_numbers_as_the_official_rules(truth):
    ours = score_chair(CAPTIONS, truth)
    official = official_chair(CAPTIONS, FIXTURE)
    assert ours.chair_s == pytest.approx(official["chair_s"])
    assert ours.chair_i == pytest.approx(official["chair_i"])


def test_reads_object_halbench_questions():
    questions = read_chair_questions(FIXTURE / "obj_halbench_questions.jsonl")
    assert [q.image_id for q in questions] == [1, 2, 3]
    assert questions[0].prompt == "Describe this image in detail." and questions[0].image is None


def test_refusals(tmp_path, truth):
    with pytest.raises(BenchmarkFormatError, match="no COCO instances_"):
        read_coco_ground_truth(tmp_path)
    (tmp_path / "instances_val2014.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(BenchmarkFormatError, match=r"instances_val2014\.json has no 'categories'"):
        read_coco_ground_truth(tmp_path)
    (tmp_path / "instances_val2014.json").write_text(json.dumps(
        {"images": [], "categories": [{"id": 1, "name": "person"}], "annotations": [{"image_id": 1}]}))
    with pytest.raises(BenchmarkFormatError, match="no 'category_id' field"):
        read_coco_ground_truth(tmp_path)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "Describe it."}) + "\n")
    with pytest.raises(BenchmarkFormatError, match="no 'image_id' field"):
        read_chair_questions(questions)
    with pytest.raises(ValueError, match="image_id 9 has no ground truth"):
        score_chair({9: "A dog."}, truth)
