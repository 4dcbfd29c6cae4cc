"""Settings of the shapes-world demo: one typed dataclass per stage, gathered in ``DemoConfig``.

``key=value`` overrides name them by section (``base.steps=1000``, ``align.beta=0.2``, ``seed=1``);
``vlmdpo config demo`` prints them all. What was measured with settings that no longer exist is in
``docs/shapes_world.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


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
    """Optimizer steps. With the vision tower frozen the loss flattens by step 2100-2400 (seeds 0 and 1); with it
    trained, answering yes/no from the image emerged late and abruptly (seed 1 of an earlier recipe was at
    chance after 2000 steps and at 0.98 accuracy after 3000)."""
    batch_size: int = 32
    """Rows per step."""
    lr: float = 1e-3
    """Learning rate."""
    frozen_parts: list[str] = field(default_factory=lambda: ["vision"])
    """Parts kept fixed while the rest trains (``model.frozen_parts``). The vision tower, as LLaVA keeps it: trained
    through a random language model at this learning rate, the judge's tower was scrambled first and binding
    colour to shape was learned again, late and at a step that moved with the summation order (seed 1's base:
    CHAIR_i 0.054 with two torch threads and 0.144 with one; frozen, 0.043 and 0.050; ``docs/shapes_world.md``)."""


@dataclass
class PairSettings:
    """Preference pairs, all from alignment images the base model never saw."""

    caption_pairs: int = 1000
    """Caption pairs, one per alignment image from the first."""
    caption_regime: str = "habit"
    """How caption pairs are made. ``habit`` (``data_recipes.shapes.habit_pairs``): the chosen caption is better
    than the rejected one but not right, as in public preference sets: a share ``chosen_hallucination_rate``
    of chosen captions ends with the popular absent object the base model's habit adds, and the rejected one
    drops a true object for one more such object (the same length). ``ground_truth`` (POVID-style,
    ``povid_pairs``): the true caption against a hallucinated rewrite; when the chosen caption is already
    right, SFT on it does as well as DPO (``docs/shapes_world.md``)."""
    chosen_hallucination_rate: float = 0.8
    """``habit`` regime: the exact share of chosen caption pairs whose chosen caption names one absent object.
    With the RLAIF pairs' chosen captions (about one in seven hallucinates), 0.8 makes 58-59% of all chosen
    captions name an absent object (seeds 0 and 3 counted), 0.7 about 52%: near one half, where whether the SFT
    control's greedy captions pick up the habit depended on the base; at 0.8 it did on every base tried, and
    where it does not there is nothing for DPO to beat (``docs/shapes_world.md``)."""
    yes_no_images: int = 500
    """Alignment images (from the first) whose one yes and one no question become pairs: the true answer vs
    the opposite one, the absent object drawn by how often noisy captions add it."""
    yes_no_objects: str = "popular"
    """Which objects the yes/no pairs ask about, one present and one absent per image. ``popular``: both drawn
    with the popularity weights of the habit, so that popularity alone answers neither (DPO on the caption pairs
    otherwise learns "a popular object is not there" and answers "No." about present ones:
    ``docs/shapes_world.md``); ``uniform``: any present object, a popular absent one; ``uncertain``: those the
    base model answers least firmly (``uncertain_yes_no_pairs``; ``yes_no_binding`` does not apply)."""
    yes_no_binding: bool = False
    """Add two yes/no pairs per image: an absent object whose colour is in the image on another shape ("No."
    chosen), which a model answering from colour alone gets wrong, and another present object ("Yes." chosen)."""
    rlaif_images: int = 500
    """Alignment images (from the last) for which the base model samples captions that the judge ranks."""
    rlaif_samples: int = 4
    """Captions sampled per image."""
    rlaif_margin: float = 0.05
    """Smallest CLIPScore gap between the best and worst sample for a pair."""
    rlaif_max_new_tokens: int = 48
    """Length limit of the sampled captions."""
    rlaif_max_length_gap: int | None = None
    """Largest difference in words between an RLAIF pair's chosen and rejected captions: the pair is then the
    best-separated one among same-length samples, so that "shorter is better" is not what it teaches; ``None``:
    best against worst (whose worst caption was longer in 67% of seed 3's pairs and shorter in 4%)."""

    def __post_init__(self) -> None:
        if self.caption_regime not in ("habit", "ground_truth"):
            raise ValueError(f"pairs.caption_regime must be habit or ground_truth, got {self.caption_regime!r}")
        if self.yes_no_objects not in ("popular", "uniform", "uncertain"):
            raise ValueError(f"pairs.yes_no_objects must be popular, uniform or uncertain, got "
                             f"{self.yes_no_objects!r}")
        if self.rlaif_max_length_gap is not None and self.rlaif_max_length_gap < 0:
            raise ValueError(f"pairs.rlaif_max_length_gap must be a number of words >= 0 or None, got "
                             f"{self.rlaif_max_length_gap}")
        if not 0.0 <= self.chosen_hallucination_rate <= 1.0:
            raise ValueError(f"pairs.chosen_hallucination_rate must lie in [0, 1], got "
                             f"{self.chosen_hallucination_rate}")


@dataclass
class AlignSettings:
    """The DPO run and the SFT control (same adapter, loss ``sft`` on the same pairs' chosen responses)."""

    losses: str = "sigmoid:1+sft:1"
    """Loss spec of the DPO run (``LossConfig.losses``). Plain sigmoid DPO at lr 5e-4 cut recall from 0.85 to
    0.51 on an earlier base (short, degenerate captions); the SFT term keeps captions complete."""
    beta: float = 0.2
    """DPO beta. 0.2 with ``lora_r`` 4 passed all three checks on seeds 0-2 with 1 and 2 torch threads, where 0.1
    passed five of six (then at lr 1e-3 and a habit share of 0.7); kept since (``docs/shapes_world.md``)."""
    steps: int = 400
    """Optimizer steps of each run."""
    batch_size: int = 8
    """Pairs per step."""
    lr: float = 5e-4
    """LoRA learning rate. At 1e-3, on seed 3's one-thread base, DPO pushed down " and" after the last true object
    of a list, where the grammar offers no other way on, and 6.5% of the aligned captions degenerated ("a large
    green diamondNoNo...": recall 4 points below the control's). At 5e-4, on twelve runs, 97.5-100% of the aligned
    captions kept the grammar (the misses milder: a list closed by a comma, a dropped word) and recall stayed
    within 0.8 points of the control's (``docs/shapes_world.md``)."""
    vision_lr: float | None = None
    """LoRA learning rate of the vision tower (``train.part_learning_rates.vision``); ``None``: ``lr``."""
    lora_r: int = 4
    """LoRA rank (alpha is twice the rank). Rank 4 took away the POPE cost that rank 16 paid (POPE F1 below the
    base's on two of six runs there, on none at rank 4: ``docs/shapes_world.md``)."""
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
         "base.batch_size=8", "pairs.caption_pairs=16", "pairs.yes_no_images=8", "pairs.rlaif_images=8",
         "pairs.rlaif_samples=2", "pairs.rlaif_max_new_tokens=16", "align.steps=2", "align.batch_size=4",
         "eval.max_new_tokens=16", "eval.probe_images=4"]
"""Settings of ``vlmdpo demo --quick``: every stage runs, on a few rows and steps (for tests)."""


def load_config(overrides: list[str] | tuple = (), quick: bool = False, out: str | None = None) -> DemoConfig:
    """Defaults (or the quick settings), then ``key=value`` overrides; validated."""
    from vlmdpo.config import load_structured

    base = (QUICK if quick else []) + ([f"out={out}"] if out is not None else [])
    return load_structured(DemoConfig, None, base + list(overrides), reference="vlmdpo config demo")


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
