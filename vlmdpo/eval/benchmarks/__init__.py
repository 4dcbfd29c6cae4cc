"""The published hallucination benchmarks, read from their own files and scored as their authors score them.

One module per benchmark, each with a reader that takes the downloaded files unchanged (refusing with a
:class:`BenchmarkFormatError` that names the file, the field and the fix) and a scorer:

* :mod:`.pope`: POPE question files per split; accuracy, precision, recall, F1, yes-ratio.
* :mod:`.chair`: CHAIR / Object HalBench on COCO annotations; CHAIR_s, CHAIR_i, recall.
* :mod:`.amber`: AMBER queries and annotations; CHAIR, Cover, Hal, Cog, yes/no metrics, AMBER score.
* :mod:`.mmhal`: MMHal-Bench questions; judge-rated score and hallucination rate per question type.

:mod:`.tasks` and :mod:`.open_tasks` turn each into what ``vlmdpo eval benchmark=...`` asks a model, scores and
saves (answers in the layout the benchmark's own script reads); the loop over checkpoints is
:mod:`vlmdpo.eval.benchmark_run`.
"""

from vlmdpo.eval.benchmarks._files import BenchmarkFormatError
from vlmdpo.eval.benchmarks.amber import (
    Amber,
    AmberQuery,
    amber_answer_official,
    read_amber,
    score_amber,
)
from vlmdpo.eval.benchmarks.chair import (
    ChairQuestion,
    ChairScore,
    ChairWords,
    read_chair_questions,
    read_coco_ground_truth,
    score_chair,
)
from vlmdpo.eval.benchmarks.mmhal import (
    RUBRIC_TEMPLATE,
    MMHalQuestion,
    parse_rating,
    read_mmhal,
    rubric_judge,
    score_mmhal,
)
from vlmdpo.eval.benchmarks.pope import (
    PopeItem,
    parse_pope_answer_official,
    read_pope,
    read_pope_answers,
    score_pope,
)

__all__ = [
    "RUBRIC_TEMPLATE",
    "Amber",
    "AmberQuery",
    "BenchmarkFormatError",
    "ChairQuestion",
    "ChairScore",
    "ChairWords",
    "MMHalQuestion",
    "PopeItem",
    "amber_answer_official",
    "parse_pope_answer_official",
    "parse_rating",
    "read_amber",
    "read_chair_questions",
    "read_coco_ground_truth",
    "read_mmhal",
    "read_pope",
    "read_pope_answers",
    "rubric_judge",
    "score_amber",
    "score_chair",
    "score_mmhal",
    "score_pope",
]
