"""Tree attention's masks and dispatch: the response mask is the bottom-right causal mask SDPA's fused kernels
take; sliding windows and the model's own prompt masks (Gemma 3's bidirectional image blocks) are kept, and
each of them matters (the fast path without it disagrees with the plain path); packed calls go through tree
attention whatever the base implementation, unpacked calls reach the model's own."""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias

from helpers import assert_fast_path_equals_plain, randomize_lora
from test_families import matrix_rows
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.fast import fast_completion_logps, fast_path_problem
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.forward.packing import pack_pairs
from vlmdpo.tiny import tiny_vlm
from vlmdpo.forward.tree_attention import PairLayout, install_tree_attention, tree_attention, window_mask


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def test_response_mask_is_bottom_right_causal_and_equals_the_explicit_mask():
    """On a GPU the mask is SDPA's ``causal_lower_right``; on a CPU the same mask as one additive float mask
    that every layer shares (one tensor for the backward, where SDPA would convert a boolean mask per call)."""
    layout = PairLayout((0,), (5,), ((3,),))
    bias = layout.response_mask(3, 5, None, torch.device("cuda"))  # nothing is allocated on the device
    assert isinstance(bias, CausalBias)
    explicit = torch.ones(3, 8, dtype=torch.bool)
    explicit[:, 5:] = torch.ones(3, 3, dtype=torch.bool).tril()  # the whole prompt, then its own past
    assert torch.equal(bias._materialize(torch.device("cpu")), explicit)
    cpu = layout.response_mask(3, 5, None, torch.device("cpu"))
    assert cpu.dtype == torch.float32 and torch.equal(cpu == 0, explicit) and torch.isneginf(cpu[~explicit]).all()
    assert layout.response_mask(3, 5, None, torch.device("cpu")) is cpu  # built once, for every layer
    assert layout.response_mask(3, 5, None, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 4, n, 8, generator=generator) for n in (3, 8, 8))
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=explicit)
    close(F.scaled_dot_product_attention(query, key, value, attn_mask=bias), expected)
    close(F.scaled_dot_product_attention(query, key, value, attn_mask=cpu), expected)


def test_packed_calls_on_a_cpu_keep_one_mask_and_grouped_keys_for_the_backward():
    """What the response calls keep for the backward on a CPU: the grouped keys and values (not repeated per
    query head) and, across layers, one mask per response shape."""
    generator = torch.Generator().manual_seed(3)
    layout = PairLayout((0,), (6,), ((4, 3),))
    query = torch.randn(1, 4, 13, 8, generator=generator, requires_grad=True)
    key, value = (torch.randn(1, 2, 13, 8, generator=generator, requires_grad=True) for _ in range(2))
    module = torch.nn.Module()
    module.config = type("Config", (), {})()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        for _layer in range(2):
            tree_attention(module, query, key, value, layout)
    response_keys = [t for t in saved if t.dim() == 4 and t.shape[2] > 6]  # prompt + response keys and values
    assert response_keys and {t.shape[1] for t in response_keys} == {2}  # 2 key heads, not the queries' 4
    masks = {t.untyped_storage().data_ptr() for t in saved if t.dim() == 2}
    assert len(masks) == 2  # chosen's and rejected's mask, shared by both layers


def test_window_mask_follows_the_transformers_rule():
    from transformers.masking_utils import causal_mask_function, sliding_window_overlay

    window, prompt_len, length = 4, 6, 3
    inside = sliding_window_overlay(window)
    expected = torch.tensor([[bool(causal_mask_function(0, 0, q, k)) and bool(inside(0, 0, q, k))
                              for k in range(prompt_len + length)] for q in range(prompt_len, prompt_len + length)])
    assert torch.equal(window_mask(length, prompt_len, window, torch.device("cpu")), expected)
    layout = PairLayout((0,), (prompt_len,), ((length,),))
    assert torch.equal(layout.response_mask(length, prompt_len, window, torch.device("cpu")) == 0, expected)
    assert layout.prompt_mask(0, "sliding_attention", window, torch.device("cpu")).shape == (6, 6)
    assert layout.prompt_mask(0, "sliding_attention", 64, torch.device("cpu")) is None  # shorter than the window


def test_grouped_keys_give_the_same_output_as_repeated_ones():
    """Grouped-query attention: SDPA's own grouping (and, for CausalBias on a GPU, repeated keys) equals
    attention over explicitly repeated heads."""
    generator = torch.Generator().manual_seed(1)
    layout = PairLayout((0, 9), (4, 5), ((3, 2), (1, 4)))
    n = 9 + 5 + 1 + 4
    query = torch.randn(1, 4, n, 8, generator=generator)
    key, value = torch.randn(1, 2, n, 8, generator=generator), torch.randn(1, 2, n, 8, generator=generator)
    module = torch.nn.Module()
    module.config = type("Config", (), {})()
    grouped = tree_attention(module, query, key, value, layout)
    repeated = tree_attention(module, query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), layout)
    close(grouped, repeated)


@pytest.fixture(scope="module")
def gemma3(vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm("gemma3"))
    model.requires_grad_(False)
    return model.eval(), processor


def _with_window(model, window: int):
    """A copy of ``model`` whose sliding-window layers see ``window`` tokens (config and modules alike)."""
    model = copy.deepcopy(model)
    model.config.get_text_config().sliding_window = window
    for module in model.modules():
        if getattr(module, "sliding_window", None) is not None:
            module.sliding_window = window
    return model


def test_sliding_windows_shorter_than_the_sequence_are_exact(gemma3):
    """Gemma 3's sliding layers with a window shorter than prompt + response (the tiny config's 512 never
    cuts): log-probs 1e-5 and LoRA gradients 1e-4 equal to the plain path, and the window changes them."""
    model, processor = gemma3
    batch = PreferenceCollator(processor)(matrix_rows())
    lengths = batch["prompt_attention_mask"].sum(1)
    window = 12
    assert int(lengths.max()) > window
    windowed = _with_window(model, window)
    policy = randomize_lora(apply_lora(windowed, r=4, alpha=8, parts=("language",)), seed=2)
    assert fast_path_problem(policy, batch) is None
    plain = assert_fast_path_equals_plain(policy, batch, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        unwindowed = completion_logps(model, batch, processor.tokenizer.pad_token_id)["chosen_logps"]
        assert (unwindowed - completion_logps(windowed, batch, processor.tokenizer.pad_token_id)["chosen_logps"]
                ).abs().max() > 1e-3  # the window is not a no-op here


def test_the_models_own_prompt_masks_are_used_and_needed(gemma3, monkeypatch):
    """Gemma 3 gives each image's tokens bidirectional attention; the packed prompt takes that mask from the
    model, and with plain causal prompts instead the fast path would be wrong."""
    model, processor = gemma3
    batch = PreferenceCollator(processor)(matrix_rows())
    packed = pack_pairs(model, batch)
    with_images = [i for i, row in enumerate(matrix_rows()) if row["images"]]
    assert packed.layout.prompt_masks is not None
    for i, masks in enumerate(packed.layout.prompt_masks):
        assert (masks is not None) == (i in with_images)
        if masks is not None:
            full = masks["full_attention"]
            assert full.triu(1).any() and torch.equal(full.tril(), torch.ones_like(full).tril())
    with torch.no_grad():
        plain = completion_logps(model, batch, processor.tokenizer.pad_token_id)["chosen_logps"]
        close(fast_completion_logps(model, batch)["chosen_logps"], plain)
        plain = completion_logps(model, batch, processor.tokenizer.pad_token_id)["per_token_logps"]
        monkeypatch.setattr(sys.modules["vlmdpo.forward.packing"], "model_prompt_masks", lambda *args: None)
        causal_only = fast_completion_logps(model, batch)["per_token_logps"]
    assert (causal_only - plain).abs().max() > 1e-5  # beyond the parity tests' tolerance


def test_attention_that_soft_caps_is_refused_not_computed_wrong():
    layout = PairLayout((0,), (2,), ((1,),))
    name = "vlmdpo_tree_sdpa"
    from transformers import AttentionInterface

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"_attn_implementation": "sdpa", "sub_configs": {},
                                               "get_text_config": lambda self: self})()
            self.config.sub_configs = {}

        def set_attn_implementation(self, value):
            self.config._attn_implementation = value

    install_tree_attention(Tiny())
    query = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="softcap"):
        AttentionInterface._global_mapping[name](torch.nn.Module(), query, query, query, None,
                                                 pair_layout=layout, softcap=30.0)


@pytest.mark.parametrize("base", ["flex_attention", "flash_attention_2"])
def test_packed_calls_use_tree_attention_and_others_the_models_own(base, monkeypatch, vlmdpo_cache):
    """A model loaded with a flex or FlashAttention kernel keeps it for unpacked calls (generation, the plain
    path) while packed calls run tree attention; the kernel is stood in for by SDPA (neither runs on this
    CPU in test time), and the spy proves which calls reached it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    sdpa, calls = AttentionInterface._global_mapping["sdpa"], []

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape[2])
        kwargs.pop("sliding_window", None)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, base, spy)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, base, AttentionMaskInterface._global_mapping["sdpa"])
    model, processor = load_model_and_processor(tiny_vlm("llava"))
    batch = PreferenceCollator(processor)(matrix_rows())
    with torch.no_grad():
        plain = completion_logps(model, batch, processor.tokenizer.pad_token_id)
        model.config.get_text_config()._attn_implementation = base
        assert fast_path_problem(model, batch) is None
        assert install_tree_attention(model) == (base if base.startswith("flash") else f"vlmdpo_tree_{base}")
        fast = fast_completion_logps(model, batch)
        assert calls == []  # every packed call went through tree attention
        again = completion_logps(model, batch, processor.tokenizer.pad_token_id)
    assert calls, "unpacked calls did not reach the model's own implementation"
    for key in ("chosen_logps", "rejected_logps"):
        close(fast[key], plain[key])
        close(again[key], plain[key])
