"""What the family matrix (``tests/test_families.py``) proves, per tiny real-architecture family: the README's
support matrix is rendered from this table, and the tests run from it, so the README claims what is tested.

Each family passes, offline in float32: completion masks that cover exactly the response text (system message,
different prompt lengths, two images in a row, a text-only row in the batch), causality (1e-6), batch
invariance (1e-5), a few LoRA steps that change only LoRA weights, batched generation equal to one row at a
time, and the fast path equal to the plain one (log-probs 1e-5, LoRA gradients 1e-4) unless a reason is given.
"""

from __future__ import annotations

# family (``tiny:<family>``) -> (transformers class, None when the fast path serves it, else why it does not)
TESTED_FAMILIES: dict[str, tuple[str, str | None]] = {
    "llava": ("LlavaForConditionalGeneration", None),
    "llava_next": ("LlavaNextForConditionalGeneration", None),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", None),
    "llava_next_video": ("LlavaNextVideoForConditionalGeneration", None),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", None),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", None),
    "idefics3": ("Idefics3ForConditionalGeneration", None),
    "smolvlm": ("SmolVLMForConditionalGeneration", None),
    "internvl": ("InternVLForConditionalGeneration", None),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", None),
    "mistral3": ("Mistral3ForConditionalGeneration", None),
    "gemma3": ("Gemma3ForConditionalGeneration", None),
    "paligemma": ("PaliGemmaForConditionalGeneration", None),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "the language model has layers packed pairs do not split by pair "
                "(linear_attention)"),
    "aya_vision": ("AyaVisionForConditionalGeneration", None),
    "glm4v": ("Glm4vForConditionalGeneration", None),
    "gemma4": ("Gemma4ForConditionalGeneration", None),
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", None),
    "glm4v_moe": ("Glm4vMoeForConditionalGeneration", None),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", "the language model has layers packed pairs do not split "
                    "by pair (linear_attention)"),
    "ernie4_5_vl_moe": ("Ernie4_5_VLMoeForConditionalGeneration", None),
    "mllama": ("MllamaForConditionalGeneration", ("a per-token input holds more than one value per token "
                                                  "(Mllama's cross-attention mask)")),
    "minicpmv4_7": ("MiniCPMV4_7ForConditionalGeneration", "the language model has layers packed pairs do not split "
                    "by pair (linear_attention)"),
    "molmo2": ("Molmo2ForConditionalGeneration", None),
    "ovis2_5": ("Ovis2_5ForConditionalGeneration", None),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", None),
    "deepseek_vl_hybrid": ("DeepseekVLHybridForConditionalGeneration", None),
}


# families whose video rows (``videos``: frames through the processor's own video processor) pass the same checks
# in ``tests/test_video.py``: masks, batch invariance, fast path against plain, LoRA steps, batched generation
VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video")

# families whose processor refuses a batch without any image (a text-only row trains only beside image rows)
NEEDS_AN_IMAGE_PER_BATCH = {"paligemma"}


def support_matrix_markdown() -> str:
    """The README's family table."""
    lines = ["| family (`tiny:<name>`) | transformers class | masks, causal, batch-invariant, LoRA steps, batched "
             "generation | fast path | video rows |", "|---|---|---|---|---|"]
    for family, (cls, reason) in TESTED_FAMILIES.items():
        tested = "tested" + (" (text-only rows only beside image rows: its processor needs an image per batch)"
                             if family in NEEDS_AN_IMAGE_PER_BATCH else "")
        fast = "exact (tested)" if reason is None else "plain path: " + reason
        video = "tested" if family in VIDEO_FAMILIES else "-"
        lines.append(f"| `{family}` | `{cls}` | {tested} | {fast} | {video} |")
    return "\n".join(lines)
