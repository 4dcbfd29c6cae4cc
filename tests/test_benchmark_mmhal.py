"""MMHal-Bench read from its response_template.json and scored with a judge as its script scores; numbers by hand.

Fixture: 16 questions, two rounds of the eight question types in the published order.
"""

import json
from pathlib import Path

import pytest

from vlmdpo.eval.benchmarks import (
    RUBRIC_TEMPLATE,
    BenchmarkFormatError,
    parse_rating,
    read_mmhal,
    rubric_judge,
    score_mmhal,
)
from vlmdpo.eval.benchmarks.mmhal import QUESTION_TYPES

FIXTURE = Path(__file__).parent / "fixtures" / "benchmarks" / "mmhal"
# Rating the stand-in judge gives to the answer of question i.
RATINGS = [6, 2, 4, 0, 3, 5, 1, 6,
           4, 4, 2, 0, 6, 5, 3, 3]


@pytest.fixture(scope="module")
def questions():
    return read_mmhal(FIXTURE / "response_template.json")


def table_judge(question, reference, answer):
    return RATINGS[int(answer.split()[-1])]


def test_reads_the_published_fields(questions):
    first = questions[0]
    assert len(questions) == 16 and first.question_type == "attribute"
    assert first.reference == "Reference answer 0." and first.image_content == ("Cup", "Table")
    assert (FIXTURE / first.image).is_file() and first.image == "images/img00.png"
    assert [q.question_type for q in questions[:8]] == list(QUESTION_TYPES)


def test_scores_by_hand(questions):
    result = score_mmhal(questions, [f"answer {i}" for i in range(16)], table_judge)
    # sum 27 + 27 = 54 over 16 -> 3.375; below 3: 2, 0, 1 and 2, 0 -> 5/16
    assert result["score"] == 54 / 16
    assert result["hallucination_rate"] == 5 / 16
    per_type = {name: values["score"] for name, values in result["per_type"].items()}
    # attribute (6+4)/2, adversarial (2+4)/2, comparison (4+2)/2, counting 0, relation (3+6)/2, environment 5,
    # holistic (1+3)/2, other (6+3)/2
    assert per_type == {"attribute": 5.0, "adversarial": 3.0, "comparison": 3.0, "counting": 0.0,
                        "relation": 4.5, "environment": 5.0, "holistic": 2.0, "other": 4.5}
    assert result["per_type"]["counting"]["hallucination_rate"] == 1.0


def test_same_numbers_as_the_official_script(questions):
    """eval_gpt_mmhal.py: types by position (i mod 8), hallucination = rating < 3."""
    result = score_mmhal(questions, [f"answer {i}" for i in range(16)], table_judge)
    scores = RATINGS
    by_position = [[scores[i] for i in range(16) if i % 8 == t] for t in range(8)]
    assert result["score"] == sum(scores) / len(scores)
    assert result["hallucination_rate"] == sum(1 for s in scores if s < 3) / len(scores)
    assert [v["score"] for v in result["per_type"].values()] == [sum(g) / len(g) for g in by_position]


def test_rating_parse():
    assert parse_rating("The answer invents a dog.\nRating: 2, very informative, with hallucination") == 2
    assert parse_rating("rating: 5") == 5
    assert parse_rating("Rating: 3 or maybe Rating: 4") == 0  # two ratings: the script takes 0
    assert parse_rating("No rating given.") == 0


def test_rubric_judge_fills_the_template(questions):
    prompts = []

    def complete(prompt):
        prompts.append(prompt)
        return "Nothing false.\nRating: 4, somewhat informative, no hallucination"

    judge = rubric_judge(complete, questions)
    assert judge(questions[1].question, questions[1].reference, "A dog on grass.") == 4
    assert "### Image Contents\nDog, Grass\n" in prompts[0]
    assert "### LMM Response to Evaluate\nA dog on grass.\n" in prompts[0]
    assert RUBRIC_TEMPLATE.count("Rating: ") == 7


def test_refusals(tmp_path, questions):
    path = tmp_path / "response_template.json"
    path.write_text(json.dumps([{"question_type": "attribute", "question": "Q?", "image_src": "x.jpg",
                                 "image_content": ["Dog"]}]))
    with pytest.raises(BenchmarkFormatError, match=r"no 'gt_answer' field.*response_template\.json"):
        read_mmhal(path)
    path.write_text(json.dumps([{"question_type": "attribute", "question": "Q?", "image_src": "x.jpg",
                                 "image_content": "Dog", "gt_answer": "A dog."}]))
    with pytest.raises(BenchmarkFormatError, match="expected a list of object labels"):
        read_mmhal(path)
    with pytest.raises(ValueError, match="got 1 answers for 16 questions"):
        score_mmhal(questions, ["a"], table_judge)
    with pytest.raises(ValueError, match="an int from 0 to 6"):
        score_mmhal(questions, [f"answer {i}" for i in range(16)], lambda q, r, a: 7)
