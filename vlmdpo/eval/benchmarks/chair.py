"""CHAIR on COCO (and Object HalBench, which is CHAIR over 300 COCO images and detailed-description prompts),
with the ground truth and word rules of the CHAIR paper's own script.

Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018, arXiv:1809.02156; rules re-implemented
from LisaAnne/Hallucination ``utils/chair.py``, the script RLHF-V, OPERA and later papers run (Object HalBench:
Yu et al., RLHF-V, arXiv:2312.00849).

**Ground truth** of an image: the COCO categories of its instance annotations (``instances_*.json``) plus the
objects its five reference captions (``captions_*.json``) mention, read with the caption rules below.

**Caption rules** (:meth:`ChairWords.objects_in`): lower-case, tokenise, singularise each token as
``pattern.en`` does (:mod:`.singular`), then merge two-token phrases left to right:

* compound objects stay one object: "hot dog" is no dog, "teddy bear" no bear, "traffic light", "cell phone"...;
* qualifiers that would read as a person are dropped: "baby bird"/"adult bird" is a bird (same for cat, dog,
  horse, sheep, cow, elephant, bear, zebra, giraffe; "baby animal"/"baby cub" is nothing), "passenger jet" is
  a jet and "passenger train" a train;
* phrases that are not objects vanish with both words: "train track", "home plate";
* "bow tie" is a tie, "toilet seat" a toilet, and a caption that says "toilet" anywhere has no "seat" (chair);

then keep the words in the synonym list (``vocabularies/chair_synonyms.json``), each mapped to its category.
Every mention counts, repeats included.

**Metrics** over N captions: CHAIR_i = hallucinated mentions / all object mentions; CHAIR_s = captions with a
hallucinated mention / N; recall = ground-truth categories mentioned / ground-truth categories, summed over
images (the recall RLHF-V reports beside CHAIR). A zero denominator gives 0.0.

**Differences** from the script: its tokeniser is NLTK's Treebank tokeniser, here a regular expression that
splits the same way on words, hyphenated words, apostrophes and punctuation (they differ on rare cases such as
"a.m."); "motor bike" and "cheesecake" match here where a typo in the source list stops them (see the json).
:mod:`vlmdpo.eval.chair` is a different CHAIR (negation-aware, one count per object per caption) and stays as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vlmdpo.eval.benchmarks._files import (
    BenchmarkFormatError,
    first_present,
    read_rows,
    require_fields,
)
from vlmdpo.eval.benchmarks.singular import singularize

CHAIR_SYNONYMS_PATH = Path(__file__).resolve().parent.parent / "vocabularies" / "chair_synonyms.json"

_COMPOUNDS = ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
              "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat",
              "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear",
              "hair drier", "potted plant", "laptop computer", "home plate", "train track")
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")


def _pair_rules() -> dict[str, str]:
    """Two singularised tokens -> the one word they count as (may be a non-object, which then drops out)."""
    rules = {phrase: phrase for phrase in _COMPOUNDS}
    for animal in _ANIMALS:
        rules[f"baby {animal}"] = rules[f"adult {animal}"] = animal
    rules.update({"passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
                  "wine glas": "wine glass"})  # "glass" singularises to "glas" (see .singular)
    return rules


# A word (hyphens and inner digits kept, as Treebank does), or one other non-space character; "dog's" splits
# into "dog" + "'s" and "don't" into "do" + "n't" as in Treebank.
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:-[a-z0-9]+)*(?=n't)|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize_like_treebank(text: str) -> list[str]:
    """Lower-case tokens of ``text`` split where NLTK's ``word_tokenize`` splits them (module docstring)."""
    return _TOKEN.findall(text.lower())


class ChairWords:
    """The CHAIR synonym list and caption rules: which COCO categories a caption mentions."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]], compounds: Iterable[str] = ()):
        """``synonyms``: ``{category: [words]}``; ``compounds``: extra two-word phrases (singular tokens) that
        stay one word, as the script's hard-coded COCO list does ("traffic light")."""
        self.category_of: dict[str, str] = {}
        for category, words in synonyms.items():
            for word in (category, *words):
                self.category_of[word] = category
        self.pair_rules = _pair_rules()
        self.pair_rules.update({phrase: phrase for phrase in compounds})

    @classmethod
    def coco(cls) -> ChairWords:
        """The published list for the 80 COCO categories."""
        return cls(json.loads(CHAIR_SYNONYMS_PATH.read_text(encoding="utf-8"))["objects"])

    @classmethod
    def from_table(cls, table: Mapping[str, Iterable[str]]) -> ChairWords:
        """CHAIR's rules over another vocabulary, ``{name: [surface forms]}`` (e.g. ``vlmdpo eval``'s
        ``vocabulary``): each form is read as a caption word is (tokenised, singularised), and a two-word form
        becomes a compound, so "red circles" is the object "red circle" and no "circle". Forms of three or
        more words have no counterpart in the script's rules and are refused."""
        synonyms: dict[str, list[str]] = {}
        compounds = []
        for name, forms in table.items():
            for form in (name, *forms):
                tokens = [singularize(token) for token in tokenize_like_treebank(form)]
                if not 1 <= len(tokens) <= 2:
                    raise ValueError(f"CHAIR: the form {form!r} of {name!r} has {len(tokens)} words; CHAIR's "
                                     "rules match objects of one or two words")
                synonyms.setdefault(name, []).append(" ".join(tokens))
                if len(tokens) == 2:
                    compounds.append(" ".join(tokens))
        return cls(synonyms, compounds)

    def objects_in(self, caption: str) -> list[tuple[str, str]]:
        """``(word, category)`` for every object mention of ``caption``, in order, repeats kept."""
        tokens = [singularize(token) for token in tokenize_like_treebank(caption)]
        words, i = [], 0
        while i < len(tokens):
            pair = " ".join(tokens[i:i + 2])
            if pair in self.pair_rules:
                words.append(self.pair_rules[pair])
                i += 2
            else:
                words.append(tokens[i])
                i += 1
        if "toilet" in words:  # "the seat of the toilet" is not a chair
            words = [word for word in words if word != "seat"]
        return [(word, self.category_of[word]) for word in words if word in self.category_of]


def _coco_files(source: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = sorted(Path(source).glob("*.json"))
    else:
        paths = [Path(p) for p in ([source] if isinstance(source, (str, Path)) else source)]
    instances = [p for p in paths if p.name.startswith("instances_")]
    captions = [p for p in paths if p.name.startswith("captions_")]
    if not instances:
        raise BenchmarkFormatError(f"CHAIR: no COCO instances_*.json among {source}; CHAIR needs COCO's instance "
                                   "annotations (e.g. instances_val2014.json) and captions (captions_val2014.json)")
    return instances, captions


def _load_coco(path: Path, fields: tuple[str, ...], fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkFormatError(f"CHAIR: cannot read {path} as json ({error}); {fix}") from None
    missing = [field for field in fields if not isinstance(data, dict) or field not in data]
    if missing:
        raise BenchmarkFormatError(f"CHAIR: {path} has no {missing[0]!r}; {fix}")
    return data


def coco_file_names(annotations: str | Path) -> dict[int, str]:
    """``{image_id: file_name}`` of the images listed in the COCO ``instances_*.json`` files of ``annotations``."""
    names = {}
    for path in _coco_files(annotations)[0]:
        for image in json.loads(path.read_text(encoding="utf-8")).get("images", []):
            names[int(image["id"])] = str(image["file_name"])
    return names


def read_coco_ground_truth(source, *, words: ChairWords | None = None) -> dict[int, frozenset[str]]:
    """``{image_id: COCO categories}`` from a folder (or list) of COCO ``instances_*`` and ``captions_*`` files.

    Several splits (train2014 and val2014, as the CHAIR script uses) are merged. Every image listed in an
    instances or captions file gets an entry, possibly empty.
    """
    words = words or ChairWords.coco()
    instances, captions = _coco_files(source)
    truth: dict[int, set[str]] = {}
    fix = "use COCO's own annotation file unchanged"
    for path in instances:
        data = _load_coco(path, ("images", "annotations", "categories"), fix)
        names = {category["id"]: category["name"] for category in data["categories"]}
        for image in data["images"]:
            truth.setdefault(image["id"], set())
        require_fields(data["annotations"], ("image_id", "category_id"), path, "CHAIR", fix)
        for annotation in data["annotations"]:
            name = names.get(annotation["category_id"])
            if name not in words.category_of:
                raise BenchmarkFormatError(f"CHAIR: {path} has category_id {annotation['category_id']} ({name!r}), "
                                           "which is no COCO category of the CHAIR synonym list")
            truth.setdefault(annotation["image_id"], set()).add(words.category_of[name])
    for path in captions:
        data = _load_coco(path, ("annotations",), fix)
        require_fields(data["annotations"], ("image_id", "caption"), path, "CHAIR", fix)
        for annotation in data["annotations"]:
            found = (category for _, category in words.objects_in(annotation["caption"]))
            truth.setdefault(annotation["image_id"], set()).update(found)
    return {image_id: frozenset(objects) for image_id, objects in truth.items()}


@dataclass(frozen=True)
class ChairQuestion:
    """One image of the benchmark's list, with the prompt it is described under."""

    image_id: int
    """COCO image id, the key of the ground truth."""
    prompt: str | None
    """The question asked (Object HalBench's detailed-description prompts), or None for plain captioning."""
    image: str | None
    """The image as the file gives it (a file name, a path or base64), or None."""


def read_chair_questions(path: str | Path) -> list[ChairQuestion]:
    """Image list and prompts from a json / json-lines file with ``image_id`` per row (Object HalBench's
    question file; ``question``, ``prompt`` or ``text`` for the prompt, ``image`` or ``image_path`` if present)."""
    rows = read_rows(path, "CHAIR")
    require_fields(rows, ("image_id",), path, "CHAIR", "each question names its COCO image by image_id")
    return [ChairQuestion(int(row["image_id"]), first_present(row, ("question", "prompt", "text")),
                          first_present(row, ("image", "image_path", "image_src"))) for row in rows]


@dataclass(frozen=True)
class ChairScore:
    """Benchmark-level CHAIR numbers and, per caption, what they were counted from."""

    chair_s: float
    chair_i: float
    recall: float
    captions: tuple[dict, ...]
    """Per caption: ``image_id``, ``mentions`` [(word, category)], ``hallucinated`` [(word, category)]."""

    def as_dict(self) -> dict[str, float]:
        """The three numbers, ready for a table."""
        return {"chair_s": self.chair_s, "chair_i": self.chair_i, "recall": self.recall}


def score_chair(captions: Mapping[int, str], ground_truth: Mapping[int, Iterable[str]], *,
                words: ChairWords | None = None) -> ChairScore:
    """CHAIR_s, CHAIR_i and recall of ``{image_id: caption}`` against :func:`read_coco_ground_truth`."""
    words = words or ChairWords.coco()
    unknown = [image_id for image_id in captions if image_id not in ground_truth]
    if unknown:
        raise ValueError(f"CHAIR: image_id {unknown[0]!r} has no ground truth; the COCO files given do not "
                         "cover the benchmark's images (Object HalBench needs train2014 and val2014)")
    details, mentions, hallucinated, recalled, truths = [], 0, 0, 0, 0
    for image_id, caption in captions.items():
        truth = frozenset(ground_truth[image_id])
        found = words.objects_in(caption)
        wrong = [(word, category) for word, category in found if category not in truth]
        mentions, hallucinated = mentions + len(found), hallucinated + len(wrong)
        recalled += len({category for _, category in found} & truth)
        truths += len(truth)
        details.append({"image_id": image_id, "mentions": found, "hallucinated": wrong})

    def ratio(numerator: int, denominator: int) -> float:
        return numerator / denominator if denominator else 0.0

    return ChairScore(chair_s=ratio(sum(bool(d["hallucinated"]) for d in details), len(details)),
                      chair_i=ratio(hallucinated, mentions), recall=ratio(recalled, truths), captions=tuple(details))
