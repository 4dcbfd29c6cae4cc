"""The fast path on CUDA: the same log-probs as the plain path with the kernels users train with (SDPA in
float32 to 1e-5; flash-attention 2 in bfloat16 to 2e-2 of the summed log-probs, where flash_attn is
installed), and a bfloat16 training step that stays finite, for each tiny family. Skipped without a GPU.

    python -m pytest -q tests/test_gpu.py
"""

import importlib.util

import pytest
import torch
from accelerate.utils import send_to_device

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import load_config
from vlmdpo.forward.fast import fast_completion_logps
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.train.step import dpo_step

from helpers import LONGER, ONE_IMAGE, SHORT, lora_policy, rows_from

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPECS = [SHORT, ONE_IMAGE, *LONGER]  # 0 to 3 images; prompts and responses of different lengths
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None


@pytest.fixture(autouse=True)
def exact_float32():
    """Full float32 matmuls and convolutions (no TF32), so that 1e-5 measures the paths, not the kernels."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def on_cuda(tiny_model_dir, dtype, attn_implementation):
    model, processor = load_model_and_processor(tiny_model_dir, dtype, attn_implementation=attn_implementation)
    return model.to("cuda").eval(), processor


def cuda_batch(processor, images):
    return send_to_device(PreferenceCollator(processor)(rows_from(images, SPECS)), "cuda")


def both_paths(model, processor, batch):
    with torch.no_grad():
        plain = completion_logps(model, batch, processor.tokenizer.pad_token_id)
        fast = fast_completion_logps(model, batch)
    return plain, fast


def test_sdpa_float32_matches_the_plain_path(tiny_model_dir, images):
    model, processor = on_cuda(tiny_model_dir, "float32", "sdpa")
    plain, fast = both_paths(model, processor, cuda_batch(processor, images))
    for key in ("chosen_logps", "rejected_logps", "per_token_logps"):
        assert fast[key].device.type == "cuda" and fast[key].dtype == torch.float32
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5)
    for key in ("chosen_lengths", "rejected_lengths"):
        assert fast[key].tolist() == plain[key].tolist()


@pytest.mark.skipif(not HAS_FLASH, reason="flash_attn is not installed")
def test_flash_attention_2_bfloat16_matches_the_plain_path(tiny_model_dir, images):
    model, processor = on_cuda(tiny_model_dir, "bfloat16", "flash_attention_2")
    plain, fast = both_paths(model, processor, cuda_batch(processor, images))
    for key in ("chosen_logps", "rejected_logps"):
        assert torch.isfinite(fast[key]).all()
        torch.testing.assert_close(fast[key], plain[key], rtol=2e-2, atol=1e-2)


def test_bfloat16_training_step_is_finite(tiny_model_dir, images):
    model, processor = on_cuda(tiny_model_dir, "bfloat16", "sdpa")
    policy = lora_policy(model).to("cuda")
    batch = cuda_batch(processor, images)
    loss, metrics = dpo_step(policy, None, batch, load_config(None, []).loss,
                             pad_token_id=processor.tokenizer.pad_token_id, forward_path="fast")
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
    assert all(torch.isfinite(torch.as_tensor(value)).all() for value in metrics.values()
               if isinstance(value, (float, torch.Tensor)))
