"""The shapes-world demo, the project's main job: data -> base VLM -> CLIP judge -> preference pairs -> DPO
(and an SFT-only control) -> evaluation of base vs aligned on held-out images -> report.

Everything runs offline on a CPU. The base model is trained from scratch on captions of which a share
carries an extra object that is not in the image (as noisy web captions do), so it hallucinates at a
measurable rate, and on yes/no questions. DPO on pairs from images the base never saw (ground truth vs
hallucinated rewrites, POVID-style; true vs opposite yes/no answers; judge-ranked samples, RLAIF-style)
should remove that habit without losing recall. Data, judge, base model and pairs are cached under a key of
the settings (and stage code versions) that made them, so a second run reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path



@dataclass
class DemoConfig:
    out: str = "outputs/demo"
    """Report folder: report.md, metrics.json, PNG plots, training runs."""
    cache: str | None = None
    """Cache root (default ``$VLMDPO_CACHE`` or ``~/.cache/vlmdpo``)."""
    seed: int = 0
    """Seed of the data and of every training run."""
    num_train: int = 4000
    """Training images. All train the judge; the first ``base_images`` train the base model and the rest are
    alignment images, the only source of preference pairs (alignment data in practice shows images the base
    model never saw, so its mistakes there are real ones rather than memorised answers)."""
    base_images: int = 3000
    """Training images of the base model (captions and yes/no questions)."""
    num_test: int = 200
    """Held-out images for evaluation."""
    image_size: int = 64
    """Image side in pixels."""
    noisy_background_fraction: float = 0.3
    """Share of images drawn on a noisy rather than a plain background."""
    noisy_caption_fraction: float = 0.6
    """Share of base-model training captions with one extra, absent object. Above one half, greedy
    decoding of the base model continues a caption with an extra object, as noisy web data teaches."""
    noisy_questions: bool = False
    """Also ask the base model, for each noisy caption, about the caption's extra object, answered yes (and
    about one more absent object, answered no): yes/no data written from noisy captions carries their errors,
    as VQA data generated from web captions does, so the base says yes to popular absent objects. Off by
    default: where a base learned to answer with it (seed 2, 1 thread, an earlier variant without the "no"
    question), DPO raised POPE F1 from 0.825 to 0.877, but none of 6 other bases (seeds 0-2 as coded, seed 0
    of that variant, seeds 0-1 with tied embeddings; seeds 0-1 with ``question_first`` too) learned to answer
    yes/no within ``base_steps``."""
    attribute_questions: bool = False
    """Also ask the base model one attribute question per image ("What shape is the red object?" -> "A
    circle."): answering needs colour and shape read from the same object, the binding that yes/no questions
    let a model skip by checking the colour alone. Off by default: on seed 0 (1 thread) the base stopped
    answering from colour alone ("same colour" yes-rate 0.21) but partly answered from the shape instead
    (0.58) and said yes to only 0.65 of present objects (POPE F1 0.64); with ``noisy_questions`` too it did
    not learn to caption (recall 0.36)."""
    question_first: bool = False
    """Render a user turn's text before its image in the base model's chat template
    (``data_recipes.shapes.base_model.QUESTION_FIRST_CHAT_TEMPLATE``), so image tokens see the question.
    Off by default: every base trained with it learned to answer yes/no from the image (4 of 4: seeds 0 and
    1 at 64 px / patch 16 and at 48 px / patch 8, 1 thread; seed 1 never does with the image first), but it
    checks the colour and the shape each somewhere in the image ("colour and shape apart" yes-rate ~0.6) and
    misses more present objects (yes-rate 0.79-0.90), so POPE F1 was 0.73-0.86 and DPO lowered it on 3 of 4."""
    patch_size: int = 16
    """Vision patch size of the base model (image tokens = (image_size / patch_size) ** 2)."""
    hidden_size: int = 128
    """Language model width."""
    num_layers: int = 3
    """Language model depth."""
    tie_embeddings: bool = False
    """Share the language model's input embeddings with its output head (as small LMs often do). Off by
    default: over seeds 0-2 (1 thread) it changed which bases learn to answer yes/no from the image in 3000
    steps (seed 1 did, POPE F1 0.79; seed 0 only partly, 0.74; seed 2 not at all) rather than how many;
    untied, seeds 0 and 2 learn it (0.85 / 0.91) and seed 1 does not."""
    vision_hidden_size: int = 64
    """Vision tower width."""
    vision_layers: int = 2
    """Vision tower depth."""
    base_steps: int = 3000
    """Optimizer steps of supervised base-model training (full fine-tuning, loss sft). Answering yes/no
    questions from the image emerges late and abruptly: seed 1 was at chance after 2000 steps (POPE
    accuracy 0.51) and at 0.98 after 3000."""
    base_batch_size: int = 32
    """Rows per base-model step."""
    base_lr: float = 1e-3
    """Base-model learning rate."""
    judge_epochs: int = 8
    """CLIP judge training epochs."""
    judge_hard_negatives: bool = True
    """Train the judge with one binding-swapped caption per image as an extra negative (NegCLIP-style; see
    ``vlmdpo.judge.clip_loss_with_hard_negatives``). On by default: plain contrastive batches let CLIP match a
    bag of colour and shape words, and the base model, whose vision tower starts from the judge's, then
    answered "is there a red square?" from the colour alone. With it (seed 0, 2 threads) the judge prefers
    the true caption to its binding swap on 0.99 of held-out images (plain: 0.86), the base says yes to a
    same-colour absent object 0.37 of the time instead of 0.975, its POPE F1 is 0.924 instead of 0.848, and
    DPO does not lower it (0.928; plain judge 0.840); the judge trains about twice as long (40 s)."""
    povid_pairs: int = 1000
    """Ground truth vs hallucination-injected rewrite pairs, one per alignment image from the first."""
    yes_no_images: int = 500
    """Alignment images (from the first) whose one yes and one no question become pairs: the true answer vs
    the opposite one."""
    yes_no_negatives: str = "popular"
    """Absent objects of the yes/no pairs: "popular" (those noisy captions add most) or "same_colour" (sharing
    a colour with a present object). See ``data_recipes.shapes.question_rows.yes_no_pairs``. "popular" by
    default: with the judge's hard negatives, "same_colour" raised POPE F1 on seed 0, whose base binds colour
    to shape (0.924 -> 0.937 vs 0.928, 2 threads), but not on seed 1 (0.771 -> 0.771) and lowered it on seed 2
    (0.754 -> 0.713 vs 0.785), whose bases still answer partly from one attribute (1 thread)."""
    rlaif_images: int = 500
    """Alignment images (from the last) for which the base model samples captions that the judge ranks."""
    rlaif_samples: int = 4
    """Captions sampled per image."""
    rlaif_margin: float = 0.05
    """Smallest CLIPScore gap between the best and worst sample for a pair."""
    dpo_losses: str = "sigmoid:1+sft:1"
    """Loss spec of the DPO run (see ``LossConfig.losses``)."""
    beta: float = 0.1
    """DPO beta."""
    dpo_steps: int = 400
    """Optimizer steps of the DPO run and of the SFT control."""
    dpo_batch_size: int = 8
    """Pairs per DPO step."""
    dpo_lr: float = 1e-3
    """LoRA learning rate of the DPO run and the SFT control."""
    lora_r: int = 16
    """LoRA rank."""
    lora_parts: list[str] = field(default_factory=lambda: ["language", "projector", "vision"])
    """Model parts whose linear layers get LoRA: language, projector, vision. All three: most remaining
    hallucinations are perception errors, and with LoRA on the language model alone the CHAIR_i cut of
    seed 0 was 53% (three parts: 66%)."""
    probe_images: int = 100
    """Held-out images asked about every colour-shape pair, for the share of "yes" answers per kind of
    question (present object, absent one sharing its colour or shape, ...): what POPE's F1 mixes together."""
    mixed_precision: str = "auto"
    """Mixed precision of every training run (``TrainConfig.mixed_precision``): "auto" is bf16 on a GPU that
    has it and float32 on a CPU; "no" keeps float32 on a GPU too (to compare with CPU runs)."""
    max_new_tokens: int = 48
    """Caption length limit at evaluation (recorded with the results)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        from data_recipes.shapes.question_rows import YES_NO_NEGATIVES
        from vlmdpo.config import mixed_precision_choice

        self.mixed_precision = mixed_precision_choice(self.mixed_precision)
        if self.yes_no_negatives not in YES_NO_NEGATIVES:
            raise ValueError(f"yes_no_negatives={self.yes_no_negatives!r}; choose one of {YES_NO_NEGATIVES}")
        if not 0 < self.base_images < self.num_train:
            raise ValueError(f"base_images={self.base_images} must be between 0 and num_train={self.num_train} "
                             "(exclusive): the rest of the training images are the alignment images")


QUICK = dict(num_train=48, base_images=32, num_test=12, base_steps=4, base_batch_size=8, judge_epochs=1,
             povid_pairs=16, yes_no_images=8, rlaif_images=8, rlaif_samples=2, dpo_steps=2, dpo_batch_size=4,
             max_new_tokens=16, probe_images=4)
"""Settings of ``vlmdpo demo --quick``: every stage runs, on a few rows and steps (for tests)."""

_DATA_KEYS = ("seed", "num_train", "num_test", "image_size", "noisy_background_fraction")
_JUDGE_KEYS = _DATA_KEYS + ("judge_epochs", "judge_hard_negatives", "patch_size", "vision_hidden_size",
                            "vision_layers")
_BASE_KEYS = _JUDGE_KEYS + ("base_images", "noisy_caption_fraction", "noisy_questions", "attribute_questions",
                            "question_first", "mixed_precision", "hidden_size",
                            "num_layers", "tie_embeddings", "base_steps", "base_batch_size", "base_lr")
_PAIR_KEYS = _BASE_KEYS + ("povid_pairs", "yes_no_images", "yes_no_negatives", "rlaif_images", "rlaif_samples",
                           "rlaif_margin")


STAGE_VERSIONS = {"data": 2, "judge": 1, "base": 5, "pairs": 7}
"""Bumped when a stage's code changes what it produces, so caches written by older code are not reused
(data 2, base 2: popular-object caption noise; base 3: one yes and one no question per image; base 4: the
separator token before each answer is trained; pairs 2: the insert_object rewrite; pairs 5: yes/no pairs;
pairs 6: their hard negatives; base 5: questions written from noisy captions; pairs 7: popular negatives).
Stages run in this order and each one's cache key holds its own version and those of the stages before it."""


def _key(config: DemoConfig, names: tuple[str, ...], stage: str) -> str:
    values = {name: getattr(config, name) for name in sorted(set(names))}
    order = list(STAGE_VERSIONS)
    values["stage_versions"] = {name: STAGE_VERSIONS[name] for name in order[: order.index(stage) + 1]}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def _cache_dir(config: DemoConfig, stage: str, names: tuple[str, ...]) -> Path:
    root = config.cache or os.environ.get("VLMDPO_CACHE") or Path.home() / ".cache" / "vlmdpo"
    return Path(root) / "shapes-demo" / f"{stage}-{_key(config, names, stage)}"


def _done(path: Path) -> bool:
    return (path / "DONE").exists()


def _mark_done(path: Path) -> None:
    (path / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))


def load_config(overrides: list[str] | tuple = (), quick: bool = False, out: str | None = None) -> DemoConfig:
    """Defaults (or the quick settings), then ``key=value`` overrides."""
    from vlmdpo.config import load_structured

    defaults = dict(QUICK if quick else {}, **({"out": out} if out is not None else {}))
    return load_structured(DemoConfig(**defaults), None, overrides)


def run_demo(out: str = "outputs/demo", quick: bool = False, overrides: list[str] | tuple = ()) -> dict:
    """Run every stage (reusing cached ones) and write the report; return ``metrics.json``'s content."""
    from vlmdpo.demo_stages import (
        align, build_data, build_pairs, evaluate_all, train_base, train_judge, write_demo_report,
    )

    config = load_config(overrides, quick=quick, out=out)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)
        return result

    data = timed("data", build_data, config, _cache_dir(config, "data", _DATA_KEYS))
    judge = timed("judge", train_judge, config, data, _cache_dir(config, "judge", _JUDGE_KEYS))
    base = timed("base model", train_base, config, data, judge, _cache_dir(config, "base", _BASE_KEYS))
    pairs = timed("pairs", build_pairs, config, data, base, judge, _cache_dir(config, "pairs", _PAIR_KEYS))
    runs = Path(config.out) / "runs"
    aligned = timed("dpo", align, config, base, pairs, runs / "dpo", config.dpo_losses)
    control = timed("sft control", align, config, base, pairs, runs / "sft_control", "sft")
    results = timed("evaluation", evaluate_all, config, data, base, judge,
                    {"aligned": aligned, "sft_control": control})
    metrics = write_demo_report(config, results, timings, runs)
    print(f"[demo] report: {Path(config.out) / 'report.md'}")
    return metrics


def config_table(config: DemoConfig) -> str:
    """The settings as a markdown table (for the report)."""
    rows = [f"| `{f.name}` | {getattr(config, f.name)} |" for f in fields(config)
            if f.name not in ("out", "cache")]
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)


__all__ = ["DemoConfig", "QUICK", "config_table", "load_config", "run_demo"]
