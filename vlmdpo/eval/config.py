"""Typed evaluation configuration: dataclasses, a YAML file, and ``key=value`` overrides (via OmegaConf).

A YAML file mirrors the dataclasses::

    base: Qwen/Qwen2-VL-2B-Instruct
    checkpoints: ["runs/*/checkpoint-*/adapter", runs/merged]
    data: {source: heldout.jsonl, objects_column: objects}
    generation: {prompt: "Describe the image in detail.", max_new_tokens: 128}
    vocabulary: coco
    clip: {model: ViT-B-32, pretrained: openai}
    metrics: [preference, chair, pope, clipscore, length]
    output_dir: outputs/eval

and any field can be overridden on the command line as ``generation.max_new_tokens=64``. With
``benchmark: pope`` (or chair, amber, mmhal) ``data.source`` is a published benchmark's files instead
(``vlmdpo.eval.benchmark_run``, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

BENCHMARKS = ("pope", "chair", "amber", "mmhal")
"""Published benchmarks ``benchmark=`` reads from their own files (``vlmdpo.eval.benchmarks``)."""
METRICS = ("preference", "chair", "pope", "clipscore", "length")
GENERATION_METRICS = ("chair", "clipscore", "length")
"""The metrics scored on generated captions: asking for any of them generates once, for all of them."""
POPE_STRATEGIES = ("random", "popular", "adversarial")


@dataclass
class EvalDataConfig:
    source: str = ""
    """Held-out rows: a save_to_disk folder, json/jsonl/parquet file, imagefolder or hub dataset name."""
    split: str = "test"
    """Split of ``source`` to use (ignored for json/jsonl/parquet/csv files and single-split save_to_disk folders)."""
    image_root: str | None = None
    """Folder that relative image paths are resolved against (default: the data file's folder)."""
    max_rows: int | None = None
    """Evaluate only the first N rows."""
    images_column: str = "images"
    """Column with a list of images (or one image)."""
    prompt_column: str | None = "prompt"
    """Column with the prompt of each pair; ``None`` or a missing column uses ``generation.prompt``."""
    objects_column: str = "objects"
    """Column with the ground-truth object names of each image (CHAIR and POPE)."""
    chosen_column: str = "chosen"
    """Column with the preferred response (preference fit)."""
    rejected_column: str = "rejected"
    """Column with the dispreferred response (preference fit)."""
    max_response_length: int | None = 256
    """Responses are truncated to this many tokens for the preference fit, as in training."""

    def __post_init__(self):
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"data.max_rows must be >= 1 or null, got {self.max_rows}")


@dataclass
class GenerationConfig:
    prompt: str | None = "Describe the image."
    """Fixed caption prompt for CHAIR, CLIPScore and length (CHAIR numbers depend on it); ``None`` uses
    each row's own prompt."""
    max_new_tokens: int = 64
    """Generation budget per response; recorded with the results, since CHAIR depends on it."""
    batch_size: int = 16
    """Rows per ``generate`` call."""
    do_sample: bool = False
    """Greedy decoding (false) or sampling (true)."""
    temperature: float = 1.0
    """Sampling temperature (only with do_sample)."""
    top_p: float = 1.0
    """Nucleus sampling mass (only with do_sample)."""
    seed: int = 0
    """Seed for sampling."""
    sort_by_length: bool = False
    """Batch rows longest prompt first (less padding); responses keep row order. Greedy outputs can differ in
    the last float bits when the padding changes; with equal prompt lengths nothing changes."""
    cache_implementation: str | None = None
    """KV cache: null (the model's default), dynamic or static (what ``compile`` needs); static can change
    greedy outputs in the last float bits."""
    compile: bool = False
    """``torch.compile`` the decoding step (needs cache_implementation=static; compiles once per batch shape, tens
    of seconds on a CPU, where it may not pay: see ``benchmarks/bench_generation.py``)."""

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("generation.max_new_tokens and generation.batch_size must be >= 1")
        if self.cache_implementation not in (None, "dynamic", "static"):
            raise ValueError(f"generation.cache_implementation must be null, dynamic or static, "
                             f"got {self.cache_implementation!r}")
        if self.compile and self.cache_implementation != "static":
            raise ValueError("generation.compile=true needs generation.cache_implementation=static")
        if self.do_sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise ValueError("generation.temperature must be > 0 and generation.top_p in (0, 1] when sampling")


@dataclass
class PopeConfig:
    strategies: list[str] = field(default_factory=lambda: list(POPE_STRATEGIES))
    """Negative-sampling splits to build: any of random, popular, adversarial."""
    questions_per_image: int = 3
    """Positive (and as many negative) questions per image."""
    prompt_suffix: str = ""
    """Text appended to each question, e.g. " Answer yes or no."; recorded with the results. Also appended
    to the yes/no questions of ``benchmark=pope`` and ``benchmark=amber``."""
    max_new_tokens: int = 8
    """Generation budget per answer; the first sentence decides yes or no. Also the budget of every yes/no
    question of ``benchmark=pope`` and ``benchmark=amber``."""
    seed: int = 0
    """Seed for the random negatives."""

    def __post_init__(self):
        bad = set(self.strategies) - set(POPE_STRATEGIES)
        if bad or not self.strategies:
            raise ValueError(f"pope.strategies must be a non-empty subset of {POPE_STRATEGIES}, got {self.strategies}")
        if self.questions_per_image < 1 or self.max_new_tokens < 1:
            raise ValueError("pope.questions_per_image and pope.max_new_tokens must be >= 1")


@dataclass
class ClipConfig:
    model: str = ""
    """open_clip model name (e.g. ViT-B-32), or a folder written by ``ClipJudge.save``; empty: no CLIPScore."""
    pretrained: str | None = None
    """open_clip pretrained tag (e.g. openai) or a local checkpoint file; ignored for a folder."""


@dataclass
class BenchmarkConfig:
    """Settings of ``benchmark=pope|chair|amber|mmhal`` beyond ``data``, ``generation`` and ``pope``."""

    annotations: str = ""
    """CHAIR: a folder (or one file) of COCO ``instances_*.json`` (and ``captions_*.json``), the ground truth;
    empty: look in ``data.source`` when that is a folder."""
    query_file: str = ""
    """AMBER: one query file to answer (e.g. ``data/query/query_generative.json``); empty: ``query_all.json``,
    else every ``query/query_*.json``."""
    prompt: str | None = None
    """Prompt of the generative questions (CHAIR, AMBER's "Describe this image."): null keeps each question's
    own prompt, and CHAIR images without one use ``generation.prompt``; a string replaces them all."""
    judge: str = ""
    """MMHal-Bench: ``package.module:NAME`` of a ``judge(question, reference, answer) -> int 0-6`` (e.g. built
    with ``vlmdpo.eval.benchmarks.rubric_judge`` around a chat model); empty: the answers are written in the
    benchmark's response file but not scored."""
    bootstrap_resamples: int = 2000
    """Resamples of the paired bootstrap interval of each checkpoint's headline number against the base."""

    def __post_init__(self):
        if self.bootstrap_resamples < 1:
            raise ValueError(f"bench.bootstrap_resamples must be >= 1, got {self.bootstrap_resamples}")
        if self.judge and ":" not in self.judge:
            raise ValueError(f"bench.judge must look like package.module:NAME (a judge(question, reference, "
                             f"answer) -> 0-6 function), got {self.judge!r}")


@dataclass
class EvalConfig:
    base: str = "tiny:llava"
    """Base model: hub name or local folder; ``tiny:<family>`` for a random-weight tiny model. Adapters are
    loaded onto it, and its log-probs are the reference of every checkpoint's preference fit."""
    checkpoints: list[str] = field(default_factory=list)
    """Adapter folders (with adapter_config.json, or a checkpoint-N folder with adapter/) or merged model
    folders; entries with * ? [ are globs."""
    include_base: bool = True
    """Evaluate the base model as a row of its own, named ``base``."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """cuda, cpu, ... or auto (cuda when available)."""
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    pope: PopeConfig = field(default_factory=PopeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    benchmark: str = ""
    """A published benchmark read from its own files: pope, chair, amber or mmhal (``data.source`` its files,
    ``data.image_root`` its images; ``metrics`` and the data column names are then unused); empty: evaluate the
    rows of ``data.source`` in the package's layout with ``metrics``."""
    bench: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    vocabulary: str = "coco"
    """Object vocabulary for CHAIR and POPE: coco, a json file ``{name: [forms]}``, or ``package.module:NAME``
    (e.g. ``data_recipes.shapes:SHAPES_VOCABULARY``); every ground-truth object must be in it. With
    ``benchmark=chair``, coco is the CHAIR paper's synonym list, anything else a ``{name: [forms]}`` table."""
    metrics: list[str] = field(default_factory=lambda: ["preference", "chair", "pope", "length"])
    """Which evaluations to run: any of preference, chair, pope, clipscore, length."""
    beta: float = 0.1
    """DPO temperature of the implicit rewards."""
    preference_batch_size: int = 8
    """Pairs per forward pass in the preference fit."""
    output_dir: str = "outputs/eval"
    """Where report.md, plots, results.json and per-checkpoint results, generations and POPE answers go."""
    title: str = "vlmdpo evaluation"
    """Heading of report.md."""
    progress: bool = True
    """Show progress bars over checkpoints and batches."""

    def __post_init__(self):
        if self.benchmark:
            self._check_benchmark()
        bad = set(self.metrics) - set(METRICS)
        if bad:
            raise ValueError(f"metrics has unknown entries {sorted(bad)}; choose from {METRICS}")
        if "clipscore" in self.metrics and not self.clip.model and not self.benchmark:
            raise ValueError("metrics includes clipscore but clip.model is empty; set clip.model=ViT-B-32 "
                             "clip.pretrained=openai (or a ClipJudge folder), or drop clipscore")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.beta <= 0 or self.preference_batch_size < 1:
            raise ValueError("beta must be positive and preference_batch_size >= 1")
        if not self.include_base and not self.checkpoints:
            raise ValueError("nothing to evaluate: give checkpoints=[...] or set include_base=true")

    def _check_benchmark(self):
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark={self.benchmark!r} is not one of {', '.join(BENCHMARKS)} (or empty for the "
                             "package's own rows)")
        if not self.data.source:
            raise ValueError(f"benchmark={self.benchmark} needs data.source: set it to "
                             f"{BENCHMARK_SOURCES[self.benchmark]}")
        if self.benchmark == "chair" and not self.bench.annotations and not Path(self.data.source).is_dir():
            raise ValueError("benchmark=chair needs the COCO annotations: set bench.annotations to the folder with "
                             "instances_val2014.json (and captions_val2014.json), or point data.source at it")
        for key in ("annotations", "query_file"):
            value = getattr(self.bench, key)
            if value and not Path(value).exists():
                raise ValueError(f"bench.{key}={value} does not exist; give the downloaded file or folder")


BENCHMARK_SOURCES = {
    "pope": "a POPE question file (coco_pope_random.json) or the folder holding them",
    "chair": "an Object HalBench question file (image_id, question per line) or the COCO annotation folder",
    "amber": "AMBER's repository folder (or its data/ folder, with annotations.json and query/)",
    "mmhal": "MMHal-Bench's response_template.json (images/ beside it)",
}
"""What ``data.source`` is for each benchmark."""


def load_eval_config(path: str | None = None, overrides: list[str] | tuple = ()) -> EvalConfig:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    from vlmdpo.config import load_structured

    return load_structured(EvalConfig, path, overrides, reference="vlmdpo config eval")


def save_eval_config(config: EvalConfig, path: str) -> None:
    """Write ``config`` as YAML next to the results it produced."""
    OmegaConf.save(OmegaConf.structured(config), path)


def config_dict(config: EvalConfig) -> dict:
    """The config as plain data (for hashing and recording)."""
    return asdict(config)
