"""The shapes-world demo, the project's main job (``vlmdpo demo``): data -> CLIP judge -> base VLM ->
preference pairs -> DPO (and an SFT-only control) -> evaluation of base vs aligned on held-out images -> report.

Everything runs offline on a CPU. The base model is trained from scratch on captions of which a share
carries an extra object that is not in the image (as noisy web captions do), so it hallucinates at a
measurable rate, and on yes/no questions. DPO on pairs from images the base never saw (ground truth vs
hallucinated rewrites, POVID-style; true vs opposite yes/no answers; judge-ranked samples, RLAIF-style)
should remove that habit without losing recall.

Settings are typed, one dataclass per stage. Each cached stage (data, judge, base, pairs) is stored under a
hash of its own settings, every earlier stage's settings, the run-wide ones and the stage code versions
(``stage_keys``), so changing any setting redoes exactly the stages it can change. What was measured with
settings that no longer exist is in ``docs/shapes_world.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class DataSettings:
    """The shapes-world images and their ground truth (``build_shapes_dataset``)."""

    num_train: int = 4000
    """Training images. All train the judge; the first ``base.images`` train the base model and the rest are
    alignment images, the only source of preference pairs (alignment data in practice shows images the base
    model never saw, so its mistakes there are real ones rather than memorised answers)."""
    num_test: int = 200
    """Held-out images for evaluation."""
    image_size: int = 64
    """Image side in pixels."""
    noisy_background_fraction: float = 0.3
    """Share of images drawn on a noisy rather than a plain background."""


@dataclass
class JudgeSettings:
    """The CLIP judge (``data_recipes.shapes.judge.train_clip_judge``); its image tower is the base's."""

    epochs: int = 8
    """Training epochs."""
    hard_negatives: bool = True
    """Train with one binding-swapped caption per image as an extra negative (NegCLIP-style). Without it the
    judge matches a bag of colour and shape words, and the base model, whose vision tower starts from the
    judge's, answers "is there a red square?" from the colour alone (seed 0: POPE F1 0.848 instead of 0.924;
    ``docs/shapes_world.md``)."""
    patch_size: int = 16
    """Vision patch size (image tokens = (image_size / patch_size) ** 2)."""
    vision_hidden_size: int = 64
    """Vision tower width."""
    vision_layers: int = 2
    """Vision tower depth."""


@dataclass
class BaseSettings:
    """The base VLM: LLaVA layout, trained from scratch with the package's own loop (loss ``sft``, full)."""

    images: int = 3000
    """Training images of the base model (captions and yes/no questions); the rest are alignment images."""
    noisy_caption_fraction: float = 0.6
    """Share of captions with one extra, absent object. Above one half, greedy decoding of the base model
    continues a caption with an extra object, as noisy web data teaches."""
    hidden_size: int = 128
    """Language model width."""
    num_layers: int = 3
    """Language model depth."""
    steps: int = 3000
    """Optimizer steps. Answering yes/no from the image emerges late and abruptly (seed 1 of an earlier recipe
    was at chance after 2000 steps and at 0.98 accuracy after 3000)."""
    batch_size: int = 32
    """Rows per step."""
    lr: float = 1e-3
    """Learning rate."""


@dataclass
class PairSettings:
    """Preference pairs, all from alignment images the base model never saw."""

    povid_pairs: int = 1000
    """Ground truth vs hallucination-injected rewrite pairs, one per alignment image from the first."""
    yes_no_images: int = 500
    """Alignment images (from the first) whose one yes and one no question become pairs: the true answer vs
    the opposite one, the absent object drawn by how often noisy captions add it."""
    rlaif_images: int = 500
    """Alignment images (from the last) for which the base model samples captions that the judge ranks."""
    rlaif_samples: int = 4
    """Captions sampled per image."""
    rlaif_margin: float = 0.05
    """Smallest CLIPScore gap between the best and worst sample for a pair."""
    rlaif_max_new_tokens: int = 48
    """Length limit of the sampled captions."""


@dataclass
class AlignSettings:
    """The DPO run and the SFT control (same adapter, loss ``sft`` on the same pairs' chosen responses)."""

    losses: str = "sigmoid:1+sft:1"
    """Loss spec of the DPO run (``LossConfig.losses``). Plain sigmoid DPO at lr 5e-4 cut recall from 0.85 to
    0.51 on an earlier base (short, degenerate captions); the SFT term keeps captions complete."""
    beta: float = 0.1
    """DPO beta."""
    steps: int = 400
    """Optimizer steps of each run."""
    batch_size: int = 8
    """Pairs per step."""
    lr: float = 1e-3
    """LoRA learning rate."""
    lora_r: int = 16
    """LoRA rank (alpha is twice the rank)."""
    lora_parts: list[str] = field(default_factory=lambda: ["language", "projector", "vision"])
    """Model parts whose linear layers get LoRA. All three: most remaining hallucinations are perception
    errors, and with LoRA on the language model alone the CHAIR_i cut of seed 0 was 53% (all three: 66%) on
    an earlier base."""


@dataclass
class EvalSettings:
    """Evaluation of the base and both adapters on the held-out images."""

    max_new_tokens: int = 48
    """Caption length limit (recorded with the results)."""
    probe_images: int = 100
    """Held-out images asked about every colour-shape pair, for the share of "yes" answers per kind of
    question (present object, absent one sharing its colour or shape, ...): what POPE's F1 mixes together."""


@dataclass
class DemoConfig:
    """Every setting of the demo; ``key=value`` overrides name them as ``base.steps=1000``, ``seed=1``."""

    out: str = "outputs/demo"
    """Report folder: report.md, metrics.json, PNG plots, training runs."""
    cache: str | None = None
    """Cache root (default ``$VLMDPO_CACHE`` or ``~/.cache/vlmdpo``); stages go to ``<cache>/shapes-demo``."""
    seed: int = 0
    """Seed of the data and of every training run."""
    mixed_precision: str = "auto"
    """Mixed precision of every training run (``train.mixed_precision``): "auto" is bf16 on a GPU that has it
    and float32 on a CPU; "no" keeps float32 on a GPU too (to compare with CPU runs)."""
    progress: bool = True
    """Show progress bars."""
    data: DataSettings = field(default_factory=DataSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        from vlmdpo.config import mixed_precision_choice

        self.mixed_precision = mixed_precision_choice(self.mixed_precision)
        if not 0 < self.base.images < self.data.num_train:
            raise ValueError(f"base.images={self.base.images} must be between 0 and data.num_train="
                             f"{self.data.num_train} (exclusive): the other training images are the alignment "
                             "images")


QUICK = ["data.num_train=48", "data.num_test=12", "judge.epochs=1", "base.images=32", "base.steps=4",
         "base.batch_size=8", "pairs.povid_pairs=16", "pairs.yes_no_images=8", "pairs.rlaif_images=8",
         "pairs.rlaif_samples=2", "pairs.rlaif_max_new_tokens=16", "align.steps=2", "align.batch_size=4",
         "eval.max_new_tokens=16", "eval.probe_images=4"]
"""Settings of ``vlmdpo demo --quick``: every stage runs, on a few rows and steps (for tests)."""

CACHED_STAGES = ("data", "judge", "base", "pairs")
"""The stages whose outputs are cached, in the order they run."""

RUN_WIDE = ("seed", "mixed_precision")
"""Top-level settings every cached stage's key holds (``out``, ``cache`` and ``progress`` change no result)."""

STAGE_VERSIONS = {"data": 2, "judge": 1, "base": 6, "pairs": 8}
"""Bumped when a stage's code changes what it produces, so caches written by older code are not reused
(data 2, base 2: popular-object caption noise; base 3: one yes and one no question per image; base 4: the
separator token before each answer is trained; pairs 2: the insert_object rewrite; pairs 5: yes/no pairs;
pairs 6: their hard negatives; base 5: questions written from noisy captions; pairs 7: popular negatives;
base 6, pairs 8: settings by stage)."""


def stage_keys(config: DemoConfig) -> dict[str, str]:
    """``{stage: key}``: a hash of the stage's settings, every earlier stage's, the run-wide settings and the
    code versions of the stage and those before it. A field added to a settings class is in the key."""
    values: dict = {name: getattr(config, name) for name in RUN_WIDE}
    keys = {}
    for stage in CACHED_STAGES:
        values[stage] = asdict(getattr(config, stage))
        values[f"{stage}_version"] = STAGE_VERSIONS[stage]
        keys[stage] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return keys


def cache_root(config: DemoConfig) -> Path:
    """Where the cached stages live: ``<cache>/shapes-demo``."""
    root = config.cache or os.environ.get("VLMDPO_CACHE") or Path.home() / ".cache" / "vlmdpo"
    return Path(root) / "shapes-demo"


def load_config(overrides: list[str] | tuple = (), quick: bool = False, out: str | None = None) -> DemoConfig:
    """Defaults (or the quick settings), then ``key=value`` overrides; validated."""
    from vlmdpo.config import load_structured

    base = (QUICK if quick else []) + ([f"out={out}"] if out is not None else [])
    return load_structured(DemoConfig, None, base + list(overrides), reference="vlmdpo config demo")


def run_demo(out: str = "outputs/demo", quick: bool = False, overrides: list[str] | tuple = ()) -> dict:
    """Run every stage (reusing cached ones) and write the report; return ``metrics.json``'s content."""
    from data_recipes.shapes.demo_report import write_demo_report
    from data_recipes.shapes.stages import align, build_data, build_pairs, evaluate_all, train_base, train_judge

    config = load_config(overrides, quick=quick, out=out)
    keys, root = stage_keys(config), cache_root(config)
    cache = {stage: root / f"{stage}-{keys[stage]}" for stage in CACHED_STAGES}
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)
        return result

    data = timed("data", build_data, config, cache["data"])
    judge = timed("judge", train_judge, config, data, cache["judge"])
    base = timed("base model", train_base, config, data, judge, cache["base"])
    pairs = timed("pairs", build_pairs, config, data, base, judge, cache["pairs"])
    runs = Path(config.out) / "runs"
    aligned = timed("dpo", align, config, base, pairs, runs / "dpo", config.align.losses)
    control = timed("sft control", align, config, base, pairs, runs / "sft_control", "sft")
    results = timed("evaluation", evaluate_all, config, data, base, judge,
                    {"aligned": aligned, "sft_control": control})
    metrics = write_demo_report(config, results, timings, runs)
    print(f"[demo] report: {Path(config.out) / 'report.md'}")
    return metrics


def config_table(config: DemoConfig) -> str:
    """The settings as a markdown table (for the report), one row per ``section.key``."""
    rows = []
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("out", "cache", "progress"):
            continue
        if hasattr(value, "__dataclass_fields__"):
            rows += [f"| `{f.name}.{name}` | {v} |" for name, v in asdict(value).items()]
        else:
            rows.append(f"| `{f.name}` | {value} |")
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)


__all__ = ["DemoConfig", "QUICK", "config_table", "load_config", "run_demo", "stage_keys"]
