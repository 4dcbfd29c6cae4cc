"""Held-out evaluation from inside the training loop, as flat ``eval/...`` metrics for metrics.jsonl."""

from __future__ import annotations

from collections.abc import Sequence

from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.eval.suite import evaluate_model


def evaluate_during_training(
    policy,
    processor,
    rows: Sequence[dict],
    *,
    beta: float = 0.1,
    reference=None,
    batch_size: int = 8,
    max_response_length: int | None = None,
    vocabulary: ObjectVocabulary | str | None = None,
    objects: Sequence[Sequence[str]] | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 32,
    generation_batch_size: int = 16,
    prefix: str = "eval/",
) -> dict[str, float]:
    """Preference fit (and, with a vocabulary, greedy captions scored by CHAIR) on held-out rows.

    Call it every N steps with the (possibly accelerate-wrapped) policy; its train/eval mode and the global
    RNG state are restored, so the training run is unchanged by evaluating. It is not sharded: under DDP call
    it on the main process only (it unwraps ``policy.module`` so no collective op is entered).

    Args:
        rows: normalized preference rows (``PreferenceDataset`` items), with ``chosen`` and ``rejected``.
        beta: the training beta, so that rewards match the training metrics.
        reference: the frozen reference model for full fine-tuning; ``None`` disables the LoRA adapter.
        vocabulary: an ``ObjectVocabulary`` or a name ``load_vocabulary`` reads (coco, a json path,
            ``package.module:NAME``); enables CHAIR.
        objects: ground-truth object names per row (default: each row's ``"objects"``); needed for CHAIR.
        prompt: fixed caption prompt for generation (default: each row's own prompt).
        max_new_tokens, generation_batch_size: caption generation settings.
        prefix: prepended to every metric name.

    Returns:
        Floats named like the training metrics: ``{prefix}rewards/accuracies``, ``rewards/margins``,
        ``rewards/chosen``, ``rewards/rejected``, ``logps/chosen``, ``logps/rejected``, and with a vocabulary
        ``chair_i``, ``chair_s``, ``object_recall``, ``repetition`` and ``response_words``.
    """
    model = getattr(policy, "module", policy)
    rows = list(rows)
    if objects is not None:
        if len(objects) != len(rows):
            raise ValueError(f"got {len(objects)} object lists for {len(rows)} rows")
        rows = [{**row, "objects": list(names)} for row, names in zip(rows, objects)]
    rows = [{"index": i, **row} for i, row in enumerate(rows)]
    if isinstance(vocabulary, str):
        from vlmdpo.eval.rows import load_vocabulary

        vocabulary = load_vocabulary(vocabulary)
    metrics = ["preference"] + (["chair", "length"] if vocabulary is not None else [])
    generation = {"prompt": prompt, "max_new_tokens": max_new_tokens, "batch_size": generation_batch_size}
    result, _ = evaluate_model(model, processor, rows, metrics=metrics, generation=generation,
                               vocabulary=vocabulary, beta=beta, preference_batch_size=batch_size,
                               max_response_length=max_response_length, reference=reference, progress=False)
    fit = result["preference"]
    flat = {
        "rewards/accuracies": fit["reward_accuracy"], "rewards/margins": fit["reward_margin"],
        "rewards/chosen": fit["chosen_reward"], "rewards/rejected": fit["rejected_reward"],
        "logps/chosen": fit["policy_chosen_logps"], "logps/rejected": fit["policy_rejected_logps"],
    }
    if vocabulary is not None:
        flat.update(chair_i=result["chair"]["chair_i"], chair_s=result["chair"]["chair_s"],
                    object_recall=result["chair"]["recall"], repetition=result["chair"]["repetition"],
                    response_words=result["length"]["mean_words"])
    return {prefix + name: float(value) for name, value in flat.items()}
