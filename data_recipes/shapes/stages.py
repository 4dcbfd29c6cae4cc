"""The stages of the shapes-world demo (see ``data_recipes.shapes.demo``); each one reads what the previous wrote.

Cached stages write a ``DONE`` marker last (``vlmdpo.done_marker``), so a killed stage is redone (base-model
training resumes from its last checkpoint) and a finished one is loaded.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import datasets

from data_recipes.shapes.settings import DemoConfig
from data_recipes.shapes.question_rows import base_sft_rows, uncertain_yes_no_pairs, yes_no_pairs
from vlmdpo.data.rows import response_text
from vlmdpo.done_marker import is_done, mark_done


def _device() -> str:
    """Where sampling and evaluation run: the GPU when there is one (training places itself via accelerate)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _train(overrides: list[str]) -> Path:
    from vlmdpo.config import load_config
    from vlmdpo.train.loop import train

    return train(load_config(None, overrides))


def build_data(config: DemoConfig, cache: Path) -> datasets.DatasetDict:
    """The shapes-world train/test splits (``data_recipes.shapes.build_shapes_dataset``)."""
    from data_recipes.shapes import build_shapes_dataset

    if not is_done(cache):
        settings = config.data
        data = build_shapes_dataset(seed=config.seed, num_train=settings.num_train, num_test=settings.num_test,
                                    image_size=settings.image_size,
                                    noisy_background_fraction=settings.noisy_background_fraction)
        data.save_to_disk(str(cache / "dataset"))
        mark_done(cache)
    return datasets.load_from_disk(str(cache / "dataset"))


def train_judge(config: DemoConfig, data: datasets.DatasetDict, cache: Path):
    """The CLIP judge: a tiny open_clip model trained contrastively on training images and true captions."""
    import copy

    from data_recipes.shapes import Scene, binding_negatives
    from data_recipes.shapes.judge import TINY_CLIP_CONFIG, train_clip_judge
    from vlmdpo.eval.judge import ClipJudge

    if not is_done(cache):
        settings = config.judge
        judge_config = copy.deepcopy(TINY_CLIP_CONFIG)
        judge_config["vision_cfg"].update(image_size=config.data.image_size, patch_size=settings.patch_size,
                                          width=settings.vision_hidden_size, layers=settings.vision_layers)
        train = data["train"]
        negatives = (binding_negatives([Scene.from_json(text) for text in train["scene"]], config.seed)
                     if settings.hard_negatives else None)
        train_clip_judge([row[0] for row in train["images"]], train["caption"], cache, config=judge_config,
                         model_name=f"shapes-judge-{cache.name}", epochs=settings.epochs, seed=config.seed,
                         progress=config.progress, hard_negatives=negatives)
        mark_done(cache)
    return ClipJudge.load(cache)


def train_base(config: DemoConfig, data: datasets.DatasetDict, judge, cache: Path) -> Path:
    """The base VLM: LLaVA-style, vision tower from the judge, trained with loss ``sft`` (full)."""
    from data_recipes.shapes.base_model import build_base_vlm

    if is_done(cache):
        return cache / "model"
    settings = config.base
    if not (cache / "rows" / "dataset_info.json").exists():
        base_train = data["train"].select(range(settings.images))
        base_sft_rows(base_train, settings.noisy_caption_fraction, config.seed).save_to_disk(str(cache / "rows"))
    if not (cache / "init" / "config.json").exists():
        model, processor = build_base_vlm(judge, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
                                          seed=config.seed)
        model.save_pretrained(cache / "init")
        processor.save_pretrained(cache / "init")
    _train([f"model.name_or_path={cache / 'init'}", "model.finetune=full", "loss.losses=sft",
            f"data.train={cache / 'rows'}", f"train.output_dir={cache / 'model'}",
            f"train.max_steps={settings.steps}", f"train.batch_size={settings.batch_size}",
            f"train.learning_rate={settings.lr}", "train.warmup_ratio=0.05",
            f"model.frozen_parts=[{','.join(settings.frozen_parts)}]", "train.logging_steps=10",
            f"train.save_steps={max(1, settings.steps // 4)}", "train.save_total_limit=1",
            f"train.seed={config.seed}", f"train.progress={config.progress}",
            f"train.mixed_precision={config.mixed_precision}"])
    for checkpoint in (cache / "model").glob("checkpoint-*"):  # optimizer state is not needed any more
        shutil.rmtree(checkpoint)
    mark_done(cache)
    return cache / "model"


def build_pairs(config: DemoConfig, data: datasets.DatasetDict, base: Path, judge, cache: Path) -> Path:
    """Caption pairs (``pairs.caption_regime``: imperfect chosen captions with the base's habit, or the truth
    against an injected hallucination), yes/no pairs (hard negatives included) and RLAIF pairs (base samples
    ranked by the judge)."""
    from data_recipes.shapes import povid_pairs
    from data_recipes.shapes.habit_pairs import habit_pairs
    from data_recipes.shapes.rlaif import rlaif_pairs
    from vlmdpo.model.load import load_model_and_processor

    if is_done(cache):
        return cache / "pairs"
    settings = config.pairs
    train = data["train"]
    align = train.select(range(config.base.images, len(train)))  # images the base model never saw

    def first(count: int) -> datasets.Dataset:
        return align.select(range(min(count, len(align))))

    def last(count: int) -> datasets.Dataset:
        return align.select(range(max(0, len(align) - count), len(align)))

    recipes = {}  # a recipe set to 0 images is left out
    if settings.caption_pairs > 0:
        images = first(settings.caption_pairs)
        if settings.caption_regime == "habit":
            recipes["habit"] = _plain(habit_pairs(images, settings.chosen_hallucination_rate, seed=config.seed),
                                      "habit")
        else:
            recipes["povid"] = _plain(povid_pairs(images, seed=config.seed), "povid")
    loaded = []

    def base_model():  # loaded once, and only for the recipes that ask the base
        if not loaded:
            model, processor = load_model_and_processor(str(base))
            loaded.extend((model.to(_device()).eval(), processor))
        return loaded

    if settings.yes_no_images > 0:
        if settings.yes_no_objects == "uncertain":
            yes_no = uncertain_yes_no_pairs(*base_model(), first(settings.yes_no_images), progress=config.progress)
        else:
            yes_no = yes_no_pairs(first(settings.yes_no_images), seed=config.seed, binding=settings.yes_no_binding,
                                  objects=settings.yes_no_objects)
        recipes["yes_no"] = yes_no.add_column("source", ["yes_no"] * len(yes_no))
    if settings.rlaif_images > 0:
        model, processor = base_model()
        rlaif = rlaif_pairs(model, processor, judge, last(settings.rlaif_images),
                            num_samples=settings.rlaif_samples, margin=settings.rlaif_margin,
                            max_new_tokens=settings.rlaif_max_new_tokens, seed=config.seed,
                            max_length_gap=settings.rlaif_max_length_gap, progress=config.progress)
        if len(rlaif):
            recipes["rlaif"] = _plain(rlaif, "rlaif")
    if not recipes:
        raise ValueError("no preference pairs: pairs.caption_pairs, pairs.yes_no_images and pairs.rlaif_images "
                         "are all 0 (or RLAIF kept none); set at least one above 0")
    features = next(iter(recipes.values())).features
    pairs = datasets.concatenate_datasets([part.cast(features) for part in recipes.values()])
    pairs = pairs.shuffle(seed=config.seed)
    pairs.save_to_disk(str(cache / "pairs"))
    (cache / "summary.json").write_text(json.dumps({name: len(part) for name, part in recipes.items()}))
    mark_done(cache)
    return cache / "pairs"


def _plain(pairs: datasets.Dataset, source: str) -> datasets.Dataset:
    """Conversational pairs as plain strings, so recipes with different schemas concatenate."""
    return pairs.map(lambda row: {"prompt": response_text(row["prompt"]), "chosen": response_text(row["chosen"]),
                                  "rejected": response_text(row["rejected"]), "source": source},
                     remove_columns=[c for c in pairs.column_names if c != "images"])


def align_overrides(config: DemoConfig, base: Path, pairs: Path, out: Path, losses: str) -> list[str]:
    """The training config (``key=value``) of an alignment run: LoRA on ``base`` with ``losses``."""
    settings = config.align
    vision_lr = [] if settings.vision_lr is None else [f"train.part_learning_rates.vision={settings.vision_lr}"]
    return vision_lr + [f"model.name_or_path={base}", f"model.lora_r={settings.lora_r}",
            f"model.lora_alpha={2 * settings.lora_r}", f"model.lora_parts=[{','.join(settings.lora_parts)}]",
            f"loss.losses={losses}", f"loss.beta={settings.beta}",
            f"data.train={pairs}", f"train.output_dir={out}", f"train.max_steps={settings.steps}",
            f"train.batch_size={settings.batch_size}", f"train.learning_rate={settings.lr}",
            "train.logging_steps=5", f"train.seed={config.seed}", f"train.progress={config.progress}",
            f"train.mixed_precision={config.mixed_precision}"]


def align(config: DemoConfig, base: Path, pairs: Path, out: Path, losses: str, extra: tuple[str, ...] = ()) -> Path:
    """LoRA on the base model with ``losses`` (the DPO run, or ``sft`` for the control), from scratch;
    ``extra`` overrides go last (``loss.dense_gamma=5``)."""
    shutil.rmtree(out, ignore_errors=True)
    return _train(align_overrides(config, base, pairs, out, losses) + list(extra))


def evaluate_all(config: DemoConfig, data: datasets.DatasetDict, base: Path, judge,
                 adapters: dict[str, Path]) -> dict[str, dict]:
    """Base and each adapter on held-out images: preference fit, CHAIR, POPE, CLIPScore, lengths and the share of
    captions in the world's grammar (``well_formed``, with up to eight that are not), the share of "yes" answers per
    kind of yes/no question (``data_recipes.shapes.yes_no_probe``) and, for each adapter, its CHAIR_i and POPE F1
    changes from the base with paired bootstrap intervals over images, and for ``aligned`` the same changes from
    ``sft_control`` (``vs_control``): the preference method against imitation of the same pairs' chosen responses."""
    from peft import PeftModel

    from data_recipes.shapes import SHAPES_VOCABULARY, povid_pairs
    from data_recipes.shapes.captions import well_formed
    from data_recipes.shapes.yes_no_probe import yes_rate_by_kind
    from vlmdpo.eval.objects import ObjectVocabulary
    from vlmdpo.eval.chair import chair_i_change
    from vlmdpo.eval.pope import pope_f1_change
    from vlmdpo.eval.rows import eval_row
    from vlmdpo.eval.suite import evaluate_model
    from vlmdpo.model.load import load_model_and_processor

    test = povid_pairs(data["test"], seed=config.seed + 1)
    rows = [eval_row(test[i], i) for i in range(len(test))]
    vocabulary = ObjectVocabulary.from_dict(SHAPES_VOCABULARY)
    max_new_tokens = config.eval.max_new_tokens
    settings = dict(metrics=["preference", "chair", "pope", "clipscore", "length"], vocabulary=vocabulary,
                    judge=judge, beta=config.align.beta, progress=config.progress,
                    generation={"max_new_tokens": max_new_tokens, "batch_size": 50})
    results, records = {}, {}
    for name, adapter in {"base": None, **adapters}.items():
        model, processor = load_model_and_processor(str(base))
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        model = model.to(_device())
        result, records[name] = evaluate_model(model.eval(), processor, rows,
                                               reference=model if adapter is None else None, **settings)
        generations = records[name]["generations"]
        formed = [well_formed(record["response"]) for record in generations]
        result["length"]["well_formed"] = statistics.fmean(formed)
        result["generation"] = {"prompt": "Describe the image.", "max_new_tokens": max_new_tokens,
                                "do_sample": False, "examples": generations[:8],
                                "ill_formed": [record for record, ok in zip(generations, formed) if not ok][:8]}
        if adapter is not None:
            result["pope_f1_change"] = pope_f1_change(records["base"]["pope"], records[name]["pope"], seed=config.seed)
            result["chair_i_change"] = chair_i_change(records["base"]["generations"], records[name]["generations"],
                                                      seed=config.seed)
        result["yes_rate_by_question"] = yes_rate_by_kind(model.eval(), processor, data["test"],
                                                          max_images=config.eval.probe_images,
                                                          progress=config.progress)
        results[name] = result
    if "aligned" in records and "sft_control" in records:  # the preference method against imitation
        aligned, control = records["aligned"], records["sft_control"]
        results["aligned"]["vs_control"] = {
            "chair_i": chair_i_change(control["generations"], aligned["generations"], seed=config.seed),
            "pope_f1": pope_f1_change(control["pope"], aligned["pope"], seed=config.seed)}
    return results
