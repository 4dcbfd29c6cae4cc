"""VLFeedback (``MMInstruction/VLFeedback``, Silkie, arXiv 2312.10665; research use, see its card): one prompt
and image, four or so model completions, each rated 1-5 by GPT-4V on three aspects.

Columns: ``id``, ``prompt`` (a string), ``models``, ``completions`` (a list of ``{"model", "response",
"annotations": {"Helpfulness" | "Ethical Considerations" | "Visual Faithfulness": {"Rating", "Rationale"}}}``)
and ``img_path`` (relative to the image folder: ``data.image_root``). Pairs: per row, on the aspect chosen by
option ``aspect`` (``Visual Faithfulness`` by default, or ``average`` of the three), the best- against the
worst-rated completion (option ``pairs: best_worst``) or every pair of completions (``pairs: all``) whose ratings
differ by at least option ``margin`` (1). Ratings that are not numbers (``"N/A"``...) leave that completion out,
and are counted in the log, as are rows without a pair above the margin.
"""

from __future__ import annotations

import itertools
import math

from vlmdpo.data.row_format import RowFormat

ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")


def _rating(completion: dict, aspect: str) -> float | None:
    annotations = completion.get("annotations") or {}
    names = ASPECTS if aspect == "average" else (aspect,)
    values = []
    for name in names:
        entry = annotations.get(name) or {}
        try:
            value = float(entry.get("Rating") if isinstance(entry, dict) else entry)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        values.append(value)
    return sum(values) / len(values)


def _vlfeedback_pairs(dataset, options: dict):
    aspect, margin, mode = options["aspect"], float(options["margin"]), options["pairs"]
    if aspect != "average" and aspect not in ASPECTS:
        raise ValueError(f"vlfeedback: option aspect must be one of {list(ASPECTS)} or average, got {aspect!r}")
    if mode not in ("best_worst", "all"):
        raise ValueError(f"vlfeedback: option pairs must be best_worst or all, got {mode!r}")
    pairs, counts = [], {"completions with a non-numeric rating (left out)": 0, "rows without a pair": 0}
    for row, completions in enumerate(dataset.select_columns(["completions"])["completions"]):
        rated = []
        for position, completion in enumerate(completions or []):
            rating = _rating(completion, aspect)
            if rating is None:
                counts["completions with a non-numeric rating (left out)"] += 1
            else:
                rated.append((rating, position))
        if mode == "best_worst":
            found = [(max(rated), min(rated))] if len(rated) >= 2 else []
        else:
            found = [(a, b) if a > b else (b, a) for a, b in itertools.combinations(rated, 2)]
        found = [(best[1], worst[1]) for best, worst in found if best[0] - worst[0] >= margin]
        counts["rows without a pair"] += not found
        pairs += [(row, pair) for pair in found]
    return pairs, counts


def _vlfeedback_row(row: dict, options: dict) -> dict:
    chosen, rejected = row["pair"]
    completions = row["completions"]
    return {"images": [row["img_path"]], "prompt": row["prompt"], "chosen": completions[chosen]["response"],
            "rejected": completions[rejected]["response"]}


VLFEEDBACK = RowFormat(
    name="vlfeedback", description="VLFeedback: prompt, img_path, completions rated per aspect",
    required=frozenset({"prompt", "img_path", "completions"}), convert=_vlfeedback_row, pairs=_vlfeedback_pairs,
    options={"aspect": "Visual Faithfulness", "margin": 1.0, "pairs": "best_worst"})
