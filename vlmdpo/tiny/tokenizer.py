"""The tiny models' tokenizer: a byte-level BPE trained locally on a small built-in corpus, so nothing is
downloaded and any caption round-trips."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", "<unk>", "<image>",
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
"""Special tokens every tiny tokenizer has, in id order: pad, BOS, EOS, unknown, LLaVA's and Qwen's markers."""

CORPUS = """
describe the image. what is in the picture? is there a red circle in the image? yes. no.
a large red circle, a small blue square and a green triangle. there is no dog in this photo.
the image shows a cat sitting on a table next to a cup of coffee. a man rides a bicycle down the street.
colours: red green blue yellow purple orange white black grey brown pink. shapes: circle square triangle
diamond star cross. sizes: small large tiny big. positions: top left right bottom center middle corner.
answer the question with yes or no. the quick brown fox jumps over the lazy dog. two dogs and three cats.
a person holding an umbrella in the rain. a plate of food with a fork and a knife. a train at the station.
"""
"""The text the tokenizer is trained on (the benchmarks draw their words from it too)."""


def train_tokenizer(vocab_size: int = 600, extra_tokens: tuple[str, ...] | list[str] = (),
                    named_tokens: dict[str, str] | None = None):
    """A byte-level BPE tokenizer trained on ``CORPUS``, wrapped as a fast HF tokenizer.

    Byte-level BPE never produces unknown tokens, so any caption round-trips through encode/decode.
    ``extra_tokens`` are further special tokens (a family's template tokens); ``named_tokens`` become tokenizer
    attributes a processor reads (Gemma 3's ``boi_token``...).
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    special = SPECIAL_TOKENS + [token for token in extra_tokens if token not in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=dict(named_tokens or {}),
        additional_special_tokens=special[4:],
    )
