"""The processor-aware preference collator.

Prompts (images included) go through the model's own ``AutoProcessor`` and chat template, left-padded, so
the processor expands image placeholders into exactly the tokens the model expects. Responses are rendered
by the same chat template, tokenized with the processor's tokenizer, right-padded, and get a
``completion_mask`` that is 1 exactly on the response's text tokens, the whitespace separator (if any) the
template puts between the generation prompt and the text (the model must generate it), and the end-of-turn
token the template closes the turn with; 0 on chat scaffolding and padding. Image tokens and prompt never
enter the mask because they never enter the completion tensors. Where the template's generation prompt is not a
prefix of its rendering of the finished conversation (a thinking template's empty ``<think></think>`` block),
the response is scored after the generation prompt, as generation will produce it.
"""

from __future__ import annotations

import torch

from vlmdpo.data.rows import DataError, response_text
from vlmdpo.data.processor_outputs import NOT_MODEL_INPUTS, TEXT_KEYS, image_axes, response_token_types
from vlmdpo.data.special_tokens import MODES, SpecialTokens



class PreferenceCollator:
    """Turn normalized preference rows (see ``vlmdpo.data.rows.normalize_row``) into model-ready tensors.

    Returns a dict with:
        ``prompt_input_ids``, ``prompt_attention_mask``: (B, P), left-padded.
        ``prompt_token_types``: dict of other per-token processor outputs, (B, P) or (B, P, ...) each
            (``token_type_ids``, ``mm_token_type_ids``, Mllama's ``cross_attention_mask``...).
        ``vision_inputs``: dict of per-image processor outputs (``pixel_values``, ``image_grid_thw``,
            ``image_sizes``, ``pixel_attention_mask``, ...), rows in the order of the prompts' images.
        ``chosen_input_ids``, ``chosen_attention_mask``, ``chosen_completion_mask``: (B, Cc), right-padded;
            the same three for ``rejected``.
        ``index``: list of the rows' dataset indices.
        ``response_token_types``: ``{key: value}`` for per-token outputs whose response tokens are not 0
            (PaliGemma's ``token_type_ids``: 1, the suffix), asked of the processor once.
        ``image_axes``: ``{key: axis}`` for per-image inputs that stack images along another axis than the first
            (MiniCPM-V's ``pixel_values``: the last), asked of the processor once.

    Args:
        processor: the model's ``AutoProcessor`` (with a chat template).
        max_prompt_length: prompts with more tokens (image tokens included) raise ``DataError``; filter them
            out beforehand with ``prompt_length`` if skipping is wanted. ``None`` for no limit.
        max_response_length: responses are truncated to this many tokens. ``None`` for no limit.
        special_tokens_in_text: a special token (``</s>``, ``<|im_end|>``, an image token) written in a row's
            own text: ``error`` raises ``DataError`` naming it; ``literal`` tokenizes it in a response as plain
            text (a prompt's is still an error: the processor tokenizes the prompt in one pass with the
            template's own control tokens). See ``vlmdpo.data.special_tokens``.
    """

    def __init__(self, processor, max_prompt_length: int | None = None, max_response_length: int | None = None,
                 special_tokens_in_text: str = "error"):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos_token)")
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length
        added = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
        self._special_tokens = sorted(set(added) | set(self.tokenizer.all_special_tokens), key=len, reverse=True)
        self.response_token_types = response_token_types(processor, self.tokenizer)
        self.image_axes = image_axes(processor)
        # what the image and video processors output is per image, even where its first two dims happen to equal
        # (batch, prompt length): Gemma 4's (images, patches, 2) image_position_ids, Idefics3's pixel_attention_mask
        self._per_image_keys = {name for part in ("image_processor", "video_processor")
                                for name in getattr(getattr(processor, part, None), "model_input_names", ())}
        # the processor expands these into image features: typed into a row's text they would be doubled
        self._image_tokens = [token for token in (getattr(processor, name, None) for name in (
            "image_token", "boi_token", "video_token")) if isinstance(token, str) and token]
        if special_tokens_in_text not in MODES:
            raise ValueError(f"special_tokens_in_text must be one of {MODES}, got {special_tokens_in_text!r}")
        self.special_tokens_in_text = special_tokens_in_text
        self.special = SpecialTokens(processor, self.tokenizer)
        if special_tokens_in_text == "literal" and not self.special.can_split():
            raise ValueError(f"special_tokens_in_text=literal needs a tokenizer that reads special tokens as text "
                             f"when asked (split_special_tokens); {type(self.tokenizer).__name__} does not. Use "
                             "error and rewrite the rows it names")

    def _check_no_image_tokens(self, row: dict, field: str) -> None:
        for message in row[field]:
            for block in message["content"]:
                found = [token for token in self._image_tokens if token in block.get("text", "")]
                if found:
                    raise DataError(row.get("index"), field, f"the text holds the model's image token {found[0]!r}, "
                                    "which the processor expands only for real images", "remove it from the text: "
                                    "images are placed by {'type': 'image'} blocks (or <image> in a plain-string "
                                    "prompt)", kind="placeholder_mismatch")

    def _check_text(self, row: dict, field: str) -> None:
        """``DataError`` for a special token written in ``row[field]``'s text, unless it is a response read
        literally."""
        if self.special_tokens_in_text == "literal" and field != "prompt":
            return
        self._check_no_image_tokens(row, field)
        found = self.special.found(row[field])
        if not found:
            return
        if field == "prompt":
            fix = ("remove or rewrite it; a prompt cannot be kept as plain text (the processor tokenizes it in one "
                   "pass with the chat template's own control tokens)")
        else:
            fix = "remove or rewrite it, or set data.special_tokens_in_text=literal to train on it as plain text"
        raise DataError(row.get("index"), field, f"the text holds {self.special.describe(found)}, which the "
                        "tokenizer reads as a control token, not as text", fix, kind="special_token_in_text")

    def _chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode_prompts(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Run the processor on the prompts and images of ``rows`` (left padding)."""
        for row in rows:
            self._check_text(row, "prompt")
        texts = [self._chat(row["prompt"], add_generation_prompt=True) for row in rows]
        # images per row ([[a], [], [b, c]]): processors that count images per prompt (Idefics3, SmolVLM,
        # Gemma 3, Mllama) need it, and those that take a flat list flatten it themselves
        images = [list(row["images"]) for row in rows]
        kwargs = {"images": images} if any(images) else {}
        # videos as one flat list, each a list of frames: what every video processor takes
        videos = [list(video) for row in rows for video in row.get("videos", ())]
        if videos:
            self._check_takes_videos(rows)
            kwargs.update(videos=videos, do_sample_frames=False)  # the rows' frames are the frames (data.video_frames)
            metadata = [meta for row in rows for meta in row.get("video_metadata") or [None] * len(row["videos"])]
            if all(meta is not None and meta["fps"] is not None for meta in metadata):
                from transformers.video_utils import VideoMetadata

                # which source frames these are, at what rate: Qwen3-VL's frame timestamps are read from it
                kwargs["video_metadata"] = [VideoMetadata(**meta) for meta in metadata]
        try:
            return self.processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)
        except ValueError as err:
            lengths = sorted({len(video) for video in videos})
            if len(lengths) > 1 and "pixel_values_videos" in str(err):
                raise DataError(None, "videos", f"the batch holds videos of {lengths} frames, and "
                                f"{type(self.processor).__name__} stacks a batch's videos into one tensor",
                                "set data.video_frames (every video then gives that many frames)",
                                kind="video_lengths", where=f"rows {[row.get('index') for row in rows]}") from err
            raise

    def _check_takes_videos(self, rows: list[dict]) -> None:
        if getattr(self.processor, "video_processor", None) is None or not getattr(self.processor, "video_token", None):
            row = next(row for row in rows if row.get("videos"))
            raise DataError(row.get("index"), "videos", f"{type(self.processor).__name__} takes no video",
                            "use a model whose processor has a video processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, "
                            "LLaVA-OneVision, LLaVA-NeXT-Video, ...), or give the frames as images",
                            kind="video_unsupported")

    def _blank_batch(self, size: int = 32) -> dict:
        from PIL import Image

        row = {"images": [Image.new("RGB", (size, size))], "prompt": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "."}]}], "chosen": [{"role": "assistant", "content": [
                {"type": "text", "text": "."}]}]}
        return self([row])

    def blank_image_inputs(self, size: int = 32) -> dict[str, torch.Tensor]:
        """``vision_inputs`` of one black ``size`` x ``size`` image, as this processor makes them: what a forward runs
        the vision tower on when its batch has no image but every process must run it (``vlmdpo.forward.idle_vision``)."""
        return self._blank_batch(size)["vision_inputs"]

    def pads_images_per_row(self) -> bool:
        """True when the processor gives a per-token input with an image axis (Mllama's (B, T, images, tiles)
        cross-attention mask): rows are then run in groups by image count (``vlmdpo.forward.image_groups``)."""
        per_token = self._blank_batch()["prompt_token_types"]
        return any(isinstance(value, torch.Tensor) and value.dim() == 4 for value in per_token.values())

    def prompt_length(self, row: dict) -> int:
        """Number of prompt tokens of one row, image tokens included."""
        return int(self.encode_prompts([row])["attention_mask"].sum())

    def measure(self, row: dict) -> dict[str, int]:
        """Token counts of one row, as training will see it: ``prompt`` (image tokens included) and each
        response before truncation. Raises ``DataError`` where the collator would, including a prompt over
        ``max_prompt_length``."""
        counts = {"prompt": self.prompt_length(row)}
        self._check_prompt_length(row, counts["prompt"])
        for field in ("chosen", "rejected"):
            if field in row:
                counts[field] = sum(self.encode_response(row, field, truncate=False)[1])
        return counts

    def _check_prompt_length(self, row: dict, length: int) -> None:
        if self.max_prompt_length is not None and length > self.max_prompt_length:
            raise DataError(row.get("index"), "prompt", f"the prompt is {length} tokens with its image and video tokens, "
                            f"more than max_prompt_length={self.max_prompt_length}", "raise max_prompt_length, "
                            "shrink the images, set data.skip_long_prompts, or data.on_bad_row=skip",
                            kind="prompt_too_long")

    def encode_response(self, row: dict, field: str, truncate: bool = True) -> tuple[list[int], list[int]]:
        """Token ids of ``row[field]`` as the chat template renders it after the prompt, and its mask
        (cut to ``max_response_length`` response tokens when ``truncate``)."""
        self._check_text(row, field)
        prompt_text = self._chat(row["prompt"], add_generation_prompt=True)
        full_text = self._chat(row["prompt"] + row[field], add_generation_prompt=False)
        text = response_text(row[field])
        if full_text.startswith(prompt_text):
            suffix = full_text[len(prompt_text):]
        else:
            # a thinking template's generation prompt opens (and here closes) a <think> block its rendering of a
            # finished answer leaves out (Qwen3, ERNIE 4.5 VL): the response is scored after the generation prompt,
            # as generation will produce it, ending the way the template ends the answer
            at = full_text.rfind(text)
            if at < 0 or not text:
                raise DataError(row.get("index"), field, "the chat template renders the prompt differently when "
                                "a response follows it, and the response text is not in its rendering",
                                "use a chat template that renders the response as given", kind="chat_template")
            suffix = full_text[at:]
        start = suffix.find(text)
        if start < 0:
            raise DataError(row.get("index"), field, "the chat template changed the response text",
                            "check the template, or give responses already in the form it renders",
                            kind="chat_template")
        end = start + len(text)
        text_span = (start, end)
        tail = suffix[end:]
        # the turn ends with the first special token after the response; templates that put none get EOS
        hits = [(tail.find(tok), tok) for tok in self._special_tokens if tail.find(tok) >= 0]
        if hits:
            position, token = min(hits, key=lambda hit: (hit[0], -len(hit[1])))
            if tail[:position].strip():
                position, token = -1, None
        if not hits or token is None:
            suffix, end = suffix[:end] + self.tokenizer.eos_token, end + len(self.tokenizer.eos_token)
        else:
            end += position + len(token)
            suffix = suffix[:end]
        # whitespace the template puts between the generation prompt and the text is generated by the model
        # too: left out of the loss, a separator that is its own token (" " before "No.") is never learned
        # and generation starts with whatever first token the training did cover
        # (byte-level tokenizers give such a token an empty offset span, so test starts, not spans)
        leading_separator = not suffix[:start].strip()
        if self.special_tokens_in_text == "literal" and self.special.found(row[field]):
            ids, offsets = self._encode_literal(row, field, suffix, *text_span)
        else:
            encoded = self.tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        mask = [int(a < end and (leading_separator or b > start)) for a, b in offsets]
        if truncate and self.max_response_length is not None:
            keep = _truncate_at(mask, self.max_response_length)
            ids, mask = ids[:keep], mask[:keep]
        return ids, mask

    def _encode_literal(self, row: dict, field: str, suffix: str, start: int, stop: int):
        """``suffix`` tokenized with its response text ``suffix[start:stop]`` read as plain text."""
        ids, offsets = self.special.encode_literal(suffix, start, stop)
        kept = [self.tokenizer.convert_ids_to_tokens(token) for token, (a, b) in zip(ids, offsets)
                if token in self.special.ids and a < stop and b > start]
        if kept:  # a processor's image token that its tokenizer does not mark special is not split
            raise DataError(row.get("index"), field, f"the tokenizer keeps {kept[0]!r} a control token even when "
                            "asked to read the text literally", "remove or rewrite it", kind="special_token_in_text")
        return ids, offsets

    def __call__(self, rows: list[dict]) -> dict:
        prompts = self.encode_prompts(rows)
        lengths = prompts["attention_mask"].sum(dim=1)
        for row, length in zip(rows, lengths.tolist()):
            self._check_prompt_length(row, length)
        batch_size, prompt_len = prompts["input_ids"].shape
        batch = {
            "prompt_input_ids": prompts["input_ids"],
            "prompt_attention_mask": prompts["attention_mask"],
            "prompt_token_types": {},
            "vision_inputs": {},
            "index": [row.get("index") for row in rows],
            "response_token_types": dict(self.response_token_types),
            "image_axes": dict(self.image_axes),
        }
        for key, value in prompts.items():
            if key in TEXT_KEYS or key in NOT_MODEL_INPUTS or not isinstance(value, torch.Tensor):
                continue
            is_per_token = (key not in self._per_image_keys and value.dim() >= 2
                            and tuple(value.shape[:2]) == (batch_size, prompt_len) and not value.is_floating_point())
            batch["prompt_token_types" if is_per_token else "vision_inputs"][key] = value
        for field in ("chosen", "rejected"):
            if field not in rows[0]:  # supervised rows carry only "chosen"
                continue
            encoded = [self.encode_response(row, field) for row in rows]
            ids, mask = _right_pad([e[0] for e in encoded], self.tokenizer.pad_token_id)
            completion_mask, _ = _right_pad([e[1] for e in encoded], 0)
            batch[f"{field}_input_ids"] = ids
            batch[f"{field}_attention_mask"] = mask
            batch[f"{field}_completion_mask"] = completion_mask
        return batch


def _truncate_at(mask: list[int], max_tokens: int) -> int:
    """Length of the prefix of a completion that keeps at most ``max_tokens`` response tokens."""
    count = 0
    for position, value in enumerate(mask):
        count += value
        if count > max_tokens:
            return position
    return len(mask)


def _right_pad(sequences: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_len) tensor of right-padded sequences and its attention mask."""
    length = max(len(s) for s in sequences)
    padded = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
    return padded, attention
