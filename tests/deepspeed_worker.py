"""One process of a DeepSpeed ZeRO run of ``tests/test_deepspeed.py``: 2 of them under ``torch.distributed.run``,
gloo, on the CPU. A tiny LLaVA with LoRA on language, projector and vision trains ``STEPS`` DPO steps, each process
on its own micro-batch of each step (some of them text only). Rank 0 saves the losses (averaged over the
processes), the LoRA weights gathered from the shards and what each process saw.

``accelerate`` cannot run DeepSpeed on a CPU (``docs/multi_gpu.md``), so this builds the engine as ``accelerate``
builds it on GPUs: ``deepspeed.initialize`` on the policy and the optimizer vlmdpo builds, the blank-image rule
installed as ``vlmdpo.train.sharding`` installs it, ``dpo_step`` called on the engine, then ``engine.backward``
and ``engine.step``.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/deepspeed_worker.py \
        MODEL_DIR STAGE OUT [--no-blank-image]
"""

import argparse

import torch
from helpers import (  # tests/ is the script's folder, so first on sys.path
    randomize_lora,
    rows_from,
)
from PIL import Image

from vlmdpo.config import LossConfig
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.idle_vision import vision_tower
from vlmdpo.model.load import is_sharded, load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.train.optimizer import build_optimizer
from vlmdpo.train.sharding import vision_every_forward_under_deepspeed
from vlmdpo.train.step import dpo_step

PARTS = ("language", "projector", "vision")
LEARNING_RATE = 1e-3
SQUARE = (["square"], "describe the image.", "a large red circle.", "a small blue square.")
WIDE = (["wide"], "what is in the picture?", "a green bar.", "a cat on a table.")
DOG = ([], "is there a dog?", "no.", "yes.")
GRASS = ([], "what colour is grass?", "it is green.", "it is a cat.")
SKY = ([], "is the sky blue?", "yes, it is.", "no.")
STEPS = [  # each step: process 0's micro-batch, process 1's
    [[SQUARE, DOG], [GRASS, SKY]],  # process 1 text only
    [[SKY, DOG], [WIDE, GRASS]],  # process 0 text only
    [[WIDE, GRASS], [SQUARE, SKY]],  # both with an image
]
WORLD_SIZE = len(STEPS[0])


def images():
    """The images ``STEPS`` name (two sizes: two different numbers of image tokens)."""
    return {"square": Image.new("RGB", (32, 32), (200, 30, 30)), "wide": Image.new("RGB", (64, 32), (30, 200, 30))}


def policy_and_collator(model_dir):
    """``(policy, pad_token_id, collator)``: the tiny VLM with a seeded LoRA adapter on its three parts (lora_B not
    zero, so the adapter changes the log-probs), in train mode."""
    model, processor = load_model_and_processor(model_dir)
    model.requires_grad_(False)
    policy = randomize_lora(apply_lora(model, r=4, alpha=8, parts=PARTS), seed=1).train()
    return policy, processor.tokenizer.pad_token_id, PreferenceCollator(processor)


def optimizer_of(policy) -> torch.optim.AdamW:
    """vlmdpo's optimizer (torch AdamW over the trainable weights), for DeepSpeed and for the one-process run alike."""
    return build_optimizer(policy, learning_rate=LEARNING_RATE, weight_decay=0.0)


def lora_weights(model) -> dict[str, torch.Tensor]:
    """A copy of every LoRA matrix (under ZeRO-3 call it inside ``GatheredParameters``)."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}


def deepspeed_config(stage: int) -> dict:
    """ZeRO ``stage`` in float32, one micro-batch a step, no clipping (as the one-process run)."""
    return {
        "train_micro_batch_size_per_gpu": len(STEPS[0][0]), "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 unless told
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # vlmdpo's torch AdamW, not DeepSpeed's own Adam
        "steps_per_print": 10 ** 9,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("stage", type=int, choices=[2, 3])
    parser.add_argument("out")
    parser.add_argument("--no-blank-image", action="store_true", help="leave the blank-image rule out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops

    # DeepSpeed's torch backend compiles its shared-memory all-reduce (g++, ~100 s here) the first time it starts
    # on a CPU; only tensor-parallel inference uses it, so this run goes without
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    policy, pad, collator = policy_and_collator(args.model_dir)
    if not args.no_blank_image:  # as vlmdpo.train.setup installs it under accelerate + DeepSpeed
        assert vision_every_forward_under_deepspeed([policy], collator.blank_image_inputs(),
                                                    collator.pads_images_per_row())
    vision_calls = []
    vision_tower(policy).register_forward_hook(lambda *_: vision_calls.append(1))
    engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer_of(policy),
                                      config=deepspeed_config(args.stage))
    print(f"rank {rank}: ZeRO-{engine.zero_optimization_stage()} engine ready", flush=True)
    pictures, losses = images(), []
    for step, specs in enumerate(STEPS):
        batch = collator(rows_from(pictures, specs[rank]))
        loss, _ = dpo_step(engine, None, batch, LossConfig(), pad_token_id=pad, forward_path="plain")
        engine.backward(loss)
        engine.step()
        mean_loss = loss.detach().clone()
        torch.distributed.all_reduce(mean_loss)
        losses.append(mean_loss / WORLD_SIZE)
        print(f"rank {rank}: step {step} done", flush=True)
    lora = [param for name, param in engine.module.named_parameters() if "lora_" in name]
    with deepspeed.zero.GatheredParameters(lora, enabled=args.stage == 3):
        weights = lora_weights(engine.module)
    calls = [torch.zeros(1) for _ in range(WORLD_SIZE)]
    torch.distributed.all_gather(calls, torch.tensor([float(len(vision_calls))]))
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "weights": weights, "stage": engine.zero_optimization_stage(),
                    "partitioned": is_sharded(engine), "vision_calls": torch.cat(calls).tolist()}, args.out)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
