"""AMBER read from its published data/ folder and scored by its inference.py rules; numbers worked out by hand.

Fixture (tests/fixtures/benchmarks/amber/data): ids 1-2 generative, 3-4 existence, 5-6 attribute, 7-8 relation.
"""

import json
import shutil
from pathlib import Path

import pytest

from vlmdpo.eval.benchmarks import BenchmarkFormatError, read_amber, score_amber
from vlmdpo.eval.benchmarks.amber_nouns import lemma_in

FIXTURE = Path(__file__).parent / "fixtures" / "benchmarks" / "amber"

RESPONSES = {
    # truth dog, grass, person; hallu cat, ball. Object words: man (covers person), dogs -> dog, ground (covers
    # grass), light (safe word), cat (hallucinated, covers hallu "cat"), watches -> watch (hallucinated here; a
    # verb, so no noun for the official tagger), tree (hallucinated). "orange" is not in the vocabulary.
    1: "A man and his dogs play on the ground under an orange light. A cat watches a tree.",
    # truth ship, ship, sea. boats -> boat covers the first "ship" slot, sea covers sea, ship again the first slot;
    # "Birds" is capitalised so, as in the script, it is not the vocabulary word "bird".
    2: "Two boats sail on the sea. Birds fly above a ship.",
    3: "No",  # truth no: right, a "No" answer
    4: "Yes",  # truth yes: right
    5: "No",  # truth yes: wrong, a "No" answer
    6: "No.",  # truth no: not exactly "No", so wrong and not a "No" answer
    7: "No",  # truth no: right
    8: "Yes",  # truth yes: right
}
# What NLTK's tagger + WordNet give for the two descriptions (NN* tokens, lemmatised), by hand.
TAGGED_NOUNS = {1: ["man", "dog", "ground", "light", "cat", "tree"], 2: ["boat", "sea", "Birds", "ship"]}


@pytest.fixture(scope="module")
def amber():
    return read_amber(FIXTURE)


def test_reads_queries_with_their_dimension(amber):
    assert [(q.id, q.dimension) for q in amber.queries] == [
        (1, "generative"), (2, "generative"), (3, "existence"), (4, "existence"), (5, "attribute"),
        (6, "attribute"), (7, "relation"), (8, "relation")]
    assert amber.queries[2].query == "Is there a cat in this image?" and amber.queries[0].image == "AMBER_1.jpg"
    assert amber.safe_words == ["orange", "light", "sign"]
    only = read_amber(FIXTURE / "data", FIXTURE / "data" / "query" / "query_generative.json")
    assert [q.id for q in only.queries] == [1, 2]


def test_lemmas():
    vocabulary = {"dog", "watch", "man", "child", "glass", "sea"}
    assert [lemma_in(w, vocabulary) for w in ("dogs", "watches", "men", "children", "glasses", "seas", "cats")] == [
        "dog", "watch", "man", "child", "glass", "sea", "cats"]


def test_scores_by_hand(amber):
    result = score_amber(amber, RESPONSES)
    generative = result["generative"]
    # object words 7 + 3 = 10, hallucinated cat, watch, tree = 3 -> CHAIR 3/10
    # truth slots covered 3/3 and 2/3 (second "ship" slot never) -> Cover 5/6
    # descriptions with a hallucination 1 of 2 -> Hal 1/2; hallu targets covered: cat of 2, none of 2 -> Cog 1/4
    assert generative["chair"] == pytest.approx(0.3)
    assert generative["cover"] == pytest.approx(5 / 6)
    assert generative["hal"] == 0.5
    assert generative["cog"] == 0.25
    # all six yes/no: right 3, 4, 7, 8 -> accuracy 4/6; "No" answers 3, 5, 7, right 3, 7 -> precision 2/3;
    # truth no 3, 6, 7 -> recall 2/3; F1 2/3
    overall = result["discriminative"]
    assert overall["accuracy"] == pytest.approx(2 / 3)
    assert overall["precision"] == overall["recall"] == overall["f1"] == pytest.approx(2 / 3)
    assert result["existence"]["f1"] == 1.0 and result["relation"]["accuracy"] == 1.0
    # attribute: 5 says no to a yes, 6 is unreadable -> nothing right, no correct "No": all zero
    assert result["attribute"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "num_questions": 2}
    # AMBER score = (1 - 0.3 + 2/3) / 2 = 0.68333...
    assert result["amber_score"]["score"] == pytest.approx((1 - 0.3 + 2 / 3) / 2)


def official_amber(amber, responses, nouns, similar=lambda a, b: a == b):
    """inference.py's counting written out plainly, with its 0.001 starting denominators and rounded
    percentages; ``nouns`` stands in for NLTK (tagging + lemmas) and ``similar`` for spaCy's > 0.8."""
    association, ground_truth = amber.association, amber.annotations
    vocabulary = [w for key in association for w in [key, *association[key]]]
    m = {key: 0.001 if key.endswith("num") else 0 for key in (
        "chair_num", "chair_score", "safe_cover_num", "safe_cover_score", "hallu_cover_num", "hallu_cover_score",
        "non_hallu_num", "non_hallu_score", "qa_correct_num", "qa_correct_score", "qa_no_num", "qa_no_score",
        "qa_ans_no_num", "qa_ans_no_score")}
    for item_id, response in responses.items():
        entry = ground_truth[item_id]
        if entry["type"] == "generative":
            found = [n for n in nouns[item_id] if n in vocabulary]
            safe_words, safe_list, ha_words, ha_list = [], [], [], []
            for idx, word in enumerate(entry["truth"]):
                safe_words += association[word]
                safe_list += [idx] * len(association[word])
            for idx, word in enumerate(entry["hallu"]):
                ha_words += association[word]
                ha_list += [idx] * len(association[word])
            safe_words += entry["truth"]
            safe_len = len(entry["truth"])
            safe_list += [0] * safe_len
            ha_words += entry["hallu"]
            ha_len = len(entry["hallu"])
            ha_list += [0] * ha_len
            flags = [0] * len(found)

            def mark(marks, j, length):
                if j < len(marks) - length:
                    marks[marks[j] + len(marks) - length] = 1
                else:
                    marks[j] = 1

            for idx, noun in enumerate(found):
                if noun in amber.safe_words:
                    continue
                if noun in safe_words:
                    mark(safe_list, safe_words.index(noun), safe_len)
                    continue
                if noun in ha_words:
                    mark(ha_list, ha_words.index(noun), ha_len)
                for j, word in enumerate(ha_words):
                    if similar(noun, word):
                        mark(ha_list, j, ha_len)
                        break
                near = next((j for j, word in enumerate(safe_words) if similar(noun, word)), None)
                if near is not None:
                    mark(safe_list, near, safe_len)
                    continue
                flags[idx] = 1
            m["chair_score"] += sum(flags)
            m["chair_num"] += len(flags)
            m["safe_cover_score"] += sum(safe_list[-safe_len:])
            m["safe_cover_num"] += safe_len
            m["hallu_cover_score"] += sum(ha_list[-ha_len:])
            m["hallu_cover_num"] += ha_len
            m["non_hallu_score"] += sum(flags) == 0
            m["non_hallu_num"] += 1
        else:
            truth = entry["truth"]
            m["qa_correct_num"] += 1
            m["qa_correct_score"] += (truth == "yes" and response == "Yes") or (truth == "no" and response == "No")
            if truth == "no":
                m["qa_no_num"] += 1
                m["qa_no_score"] += response == "No"
            if response == "No":
                m["qa_ans_no_num"] += 1
                m["qa_ans_no_score"] += truth == "no"
    precision = round(m["qa_ans_no_score"] / m["qa_ans_no_num"] * 100, 1)
    recall = round(m["qa_no_score"] / m["qa_no_num"] * 100, 1)
    return {
        "chair": round(m["chair_score"] / m["chair_num"] * 100, 1),
        "cover": round(m["safe_cover_score"] / m["safe_cover_num"] * 100, 1),
        "hal": round(100 - m["non_hallu_score"] / m["non_hallu_num"] * 100, 1),
        "cog": round(m["hallu_cover_score"] / m["hallu_cover_num"] * 100, 1),
        "accuracy": round(m["qa_correct_score"] / m["qa_correct_num"] * 100, 1),
        "precision": precision, "recall": recall,
        "f1": round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + 0.0001) * 100, 1),
    }


def _printed(result):
    """Our fractions as the script prints them: percent, one decimal."""
    flat = {**result["generative"], **{k: v for k, v in result["discriminative"].items() if k != "num_questions"}}
    return {key: round(value * 100, 1) for key, value in flat.items()}


def test_same_numbers_as_the_official_rules_given_the_same_nouns(amber):
    official = official_amber(amber, RESPONSES, TAGGED_NOUNS)
    ours = _printed(score_amber(amber, RESPONSES, nouns=_nouns_of))
    # The script starts every denominator at 0.001: precision = 2 / 3.001 = 66.64% prints 66.6 where the exact
    # 2/3 prints 66.7. That shift is below 0.01 points on AMBER's 14,216 questions; on 6 it shows in the last digit.
    exact = ("chair", "cover", "hal", "cog", "accuracy")
    assert {key: ours[key] for key in exact} == {key: official[key] for key in exact}
    assert all(round(abs(ours[key] - official[key]), 1) <= 0.1 for key in ("precision", "recall", "f1"))
    assert (ours["precision"], official["precision"]) == (66.7, 66.6)


def _nouns_of(text):
    return TAGGED_NOUNS[next(i for i, t in RESPONSES.items() if t == text)]


def test_default_nouns_against_the_official_pipeline(amber):
    """The measured cost of not having NLTK's tagger: on this fixture Cover, Hal and Cog agree (the yes/no
    numbers do not use it); CHAIR is 30.0 instead of 22.2 because "watches" (a verb) counts as the object "watch"."""
    official = official_amber(amber, RESPONSES, TAGGED_NOUNS)
    ours = _printed(score_amber(amber, RESPONSES))
    generative = ("chair", "cover", "hal", "cog")
    assert {key for key in generative if ours[key] != official[key]} == {"chair"}
    assert (ours["chair"], official["chair"]) == (30.0, 22.2)


def test_near_synonyms_when_a_similarity_is_given(amber):
    # "puppy" is no vocabulary word, so it never reaches the similarity test: as in the script, only
    # vocabulary words are judged. "forest" is (tree's associate): similar to "grass" by this toy rule,
    # it covers grass instead of counting as a hallucination.
    toy = {("forest", "grass")}
    result = score_amber(amber, {1: "A forest."}, similar=lambda a, b: a == b or (a, b) in toy)
    assert result["generative"]["chair"] == 0.0 and result["generative"]["cover"] == pytest.approx(1 / 3)
    assert score_amber(amber, {1: "A forest."})["generative"]["chair"] == 1.0


def test_refusals(tmp_path, amber):
    with pytest.raises(BenchmarkFormatError, match="no annotations.json"):
        read_amber(tmp_path)
    broken = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", broken)
    (broken / "annotations.json").write_text(json.dumps([{"id": 1, "truth": ["dog"]}]))
    with pytest.raises(BenchmarkFormatError, match=r"annotations\.json has no 'type' field"):
        read_amber(tmp_path)
    (broken / "annotations.json").write_text(json.dumps([{"id": 1, "type": "generative", "truth": ["dog"]}]))
    with pytest.raises(BenchmarkFormatError, match="has no 'hallu' objects"):
        read_amber(tmp_path)
    shutil.copy(FIXTURE / "data" / "annotations.json", broken / "annotations.json")
    (broken / "safe_words.txt").unlink()
    with pytest.raises(BenchmarkFormatError, match="safe_words.txt is missing"):
        read_amber(tmp_path)
    with pytest.raises(ValueError, match="response id 99 is not a query"):
        score_amber(amber, {99: "Yes"})
