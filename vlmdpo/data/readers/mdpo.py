"""mDPO's preference data (``fwnlp/mDPO-preference-data``, arXiv 2406.11839; see its card): ``img_path``,
``prompt``, ``chosen``, ``rejected``, where the prompt already holds LLaVA-1.5's chat template::

    A chat between a curious user and an artificial intelligence assistant. ... USER: <image>\\nWhat is ... ASSISTANT:

Mapping: the text before ``USER:`` becomes the system message, the text between ``USER:`` and the last
``ASSISTANT:`` the user message (``<image>`` marking the image), so the model's own chat template renders the
turn instead of LLaVA's being rendered inside it. ``images = [img_path]`` (under ``data.image_root``).
"""

from __future__ import annotations

from vlmdpo.data.rows import DataError
from vlmdpo.data.row_format import RowFormat


def _mdpo_row(row: dict, options: dict) -> dict:
    text = row["prompt"]
    head, user_marker, rest = text.partition("USER:")
    question, assistant_marker, tail = rest.rpartition("ASSISTANT:")
    if not user_marker or not assistant_marker or tail.strip():
        raise DataError(None, "prompt", "the prompt is not in LLaVA's 'USER: ... ASSISTANT:' template",
                        "use data.format=trl for prompts that hold only the question", kind="bad_format")
    prompt = [{"role": "user", "content": question.strip()}]
    if head.strip():
        prompt.insert(0, {"role": "system", "content": head.strip()})
    return {"images": [row["img_path"]], "prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}


MDPO = RowFormat(
    name="mdpo", description="mDPO: img_path, prompt in LLaVA's chat template, chosen, rejected",
    required=frozenset({"img_path", "prompt", "chosen", "rejected"}), excluded=frozenset({"completions", "images"}),
    convert=_mdpo_row)
