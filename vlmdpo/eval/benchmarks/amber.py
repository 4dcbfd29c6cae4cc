"""AMBER as published: its query files and annotation file, scored as its ``inference.py`` scores them.

Wang et al., "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation", arXiv:2311.07397;
files in junyangwang0410/AMBER ``data/``: ``query/query_generative.json`` and ``query/query_discriminative*.json``
(a json list of ``id``, ``image``, ``query``), ``annotations.json`` (a list where entry ``id - 1`` has ``type``
and ``truth``: object lists ``truth``/``hallu`` for generative ids, "yes"/"no" for discriminative ones),
``relation.json`` (object -> associated words) and ``safe_words.txt``.

The dimension of a discriminative id comes from its annotation ``type``: ``discriminative-hallucination`` is
existence, ``discriminative-attribute-{state,number,action}`` attribute, ``discriminative-relation`` and
``relation`` relation (the script's last branch takes both).

**Discriminative metrics** take "no" as the positive class, as the script does: precision = correct "No"
answers / "No" answers, recall = correct "No" answers / questions whose truth is no. An answer counts only if
it is exactly "Yes" or "No" (:func:`amber_answer_official`); anything else is wrong and is no "No" answer.
Pass ``parse=`` to read free text another way, e.g. POPE's rule.

**AMBER score** = (1 - CHAIR + F1) / 2, CHAIR from the generative task and F1 over all discriminative questions
(paper, Sec. 3.4). All numbers here are fractions; the script prints percent rounded to 0.1, and its F1 is
computed from those rounded precision and recall plus 0.0001 in the denominator (0.001 for existence), so
its F1 can differ from the exact one in the last printed digit.

Generative metrics and where their object matching differs from the script: :mod:`.amber_nouns`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlmdpo.eval.benchmarks._files import (
    BenchmarkFormatError,
    read_rows,
    require_fields,
)
from vlmdpo.eval.benchmarks.amber_nouns import score_generative

DIMENSIONS = {
    "generative": "generative",
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "attribute",
    "discriminative-attribute-number": "attribute",
    "discriminative-attribute-action": "attribute",
    "discriminative-relation": "relation",
    "relation": "relation",
}
_FIX = "use AMBER's data/ folder unchanged (annotations.json, relation.json, safe_words.txt, query/*.json)"


@dataclass(frozen=True)
class AmberQuery:
    """One AMBER query."""

    id: int
    image: str
    """Image file name, e.g. "AMBER_1.jpg"."""
    query: str
    """The prompt, "Describe this image." or a yes/no question."""
    dimension: str
    """generative, existence, attribute or relation."""


@dataclass(frozen=True)
class Amber:
    """The benchmark's queries and everything needed to score answers to them."""

    queries: list[AmberQuery]
    annotations: dict[int, dict] = field(repr=False)
    """id -> the annotation entry as published (``type``, ``truth``, and ``hallu`` for generative ids)."""
    association: dict[str, list[str]] = field(repr=False)
    safe_words: list[str] = field(repr=False)


def _data_folder(source: Path) -> Path:
    for folder in (source, source / "data"):
        if (folder / "annotations.json").is_file():
            return folder
    raise BenchmarkFormatError(f"AMBER: no annotations.json in {source} or {source / 'data'}; {_FIX}")


def read_amber(source: str | Path, query_file: str | Path | None = None) -> Amber:
    """AMBER from its repository folder (or its ``data/``); ``query_file`` picks one query file, else
    ``query/query_all.json`` or, failing that, every ``query/query_*.json``."""
    folder = _data_folder(Path(source))
    annotations_path = folder / "annotations.json"
    rows = read_rows(annotations_path, "AMBER")
    require_fields(rows, ("id", "type", "truth"), annotations_path, "AMBER", _FIX)
    annotations = {int(row["id"]): row for row in rows}
    for row in rows:
        if row["type"] not in DIMENSIONS:
            raise BenchmarkFormatError(f"AMBER: {annotations_path} id {row['id']} has type {row['type']!r}; "
                                       f"expected one of {sorted(DIMENSIONS)}")
        if row["type"] == "generative" and "hallu" not in row:
            raise BenchmarkFormatError(f"AMBER: generative id {row['id']} of {annotations_path} has no 'hallu' "
                                       f"objects; {_FIX}")
    association = _read_association(folder / "relation.json")
    safe_path = folder / "safe_words.txt"
    if not safe_path.is_file():
        raise BenchmarkFormatError(f"AMBER: {safe_path} is missing; {_FIX}")
    safe_words = [line.strip() for line in safe_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if query_file is not None:
        query_files = [Path(query_file)]
    elif (folder / "query" / "query_all.json").is_file():
        query_files = [folder / "query" / "query_all.json"]
    else:
        query_files = sorted((folder / "query").glob("query_*.json"))
    if not query_files:
        raise BenchmarkFormatError(f"AMBER: no query/query_*.json in {folder}; {_FIX}")
    queries: dict[int, AmberQuery] = {}
    for path in query_files:
        query_rows = read_rows(path, "AMBER")
        require_fields(query_rows, ("id", "image", "query"), path, "AMBER", _FIX)
        for row in query_rows:
            if int(row["id"]) not in annotations:
                raise BenchmarkFormatError(f"AMBER: query id {row['id']} of {path} has no entry in "
                                           f"{annotations_path}; are the two files from the same release?")
            queries[int(row["id"])] = AmberQuery(int(row["id"]), str(row["image"]), str(row["query"]),
                                                 DIMENSIONS[annotations[int(row["id"])]["type"]])
    return Amber(sorted(queries.values(), key=lambda q: q.id), annotations, association, safe_words)


def _read_association(path: Path) -> dict[str, list[str]]:
    rows = read_rows(path, "AMBER")
    if len(rows) != 1 or not all(isinstance(v, list) for v in rows[0].values()):
        raise BenchmarkFormatError(f"AMBER: {path} should be one object mapping each object to a list of "
                                   f"associated words; {_FIX}")
    return rows[0]


def amber_answer_official(text: str) -> str | None:
    """ "yes" for exactly "Yes", "no" for exactly "No", else None (counted wrong), as the script compares."""
    return {"Yes": "yes", "No": "no"}.get(text)


def _no_is_positive(pairs: list[tuple[str | None, str]]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 of (answer, truth) pairs with "no" as the positive class."""
    correct = sum(answer == truth for answer, truth in pairs)
    said_no = sum(answer == "no" for answer, _ in pairs)
    truly_no = sum(truth == "no" for _, truth in pairs)
    hits = sum(answer == truth == "no" for answer, truth in pairs)
    precision = hits / said_no if said_no else 0.0
    recall = hits / truly_no if truly_no else 0.0
    return {"accuracy": correct / len(pairs) if pairs else 0.0, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "num_questions": len(pairs)}


def score_amber(benchmark: Amber, responses: Mapping[int, str], *,
                parse: Callable[[str], str | None] = amber_answer_official,
                nouns: Callable[[str], list[str]] | None = None,
                similar: Callable[[str, str], bool] | None = None) -> dict[str, dict[str, float]]:
    """AMBER's tables for ``{id: response}``: ``generative`` (chair, cover, hal, cog), ``discriminative``
    (all yes/no questions), ``existence``, ``attribute``, ``relation`` (accuracy, precision, recall, f1) and
    ``amber_score``; a part is present when some response belongs to it. Ids must be queries of ``benchmark``.
    ``nouns`` and ``similar`` are :func:`.amber_nouns.score_generative`'s.
    """
    asked = {query.id: query for query in benchmark.queries}
    unknown = [item_id for item_id in responses if item_id not in asked]
    if unknown:
        raise ValueError(f"AMBER: response id {unknown[0]!r} is not a query of the files read")
    results: dict[str, dict[str, float]] = {}
    descriptions = {i: text for i, text in responses.items() if asked[i].dimension == "generative"}
    if descriptions:
        generative = score_generative(descriptions, benchmark.annotations, benchmark.association,
                                      benchmark.safe_words, nouns=nouns, similar=similar)
        results["generative"] = {key: generative[key] for key in ("chair", "cover", "hal", "cog")}
    pairs: dict[str, list[tuple[str | None, str]]] = {}
    for item_id, text in responses.items():
        if asked[item_id].dimension != "generative":
            pair = (parse(text), str(benchmark.annotations[item_id]["truth"]))
            pairs.setdefault("discriminative", []).append(pair)
            pairs.setdefault(asked[item_id].dimension, []).append(pair)
    for part in ("discriminative", "existence", "attribute", "relation"):
        if part in pairs:
            results[part] = _no_is_positive(pairs[part])
    if "generative" in results and "discriminative" in results:
        score = (1 - results["generative"]["chair"] + results["discriminative"]["f1"]) / 2
        results["amber_score"] = {"score": score}
    return results
