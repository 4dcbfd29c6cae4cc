"""Special tokens typed into a row's own text: named before training, or kept as literal text.

A tokenizer turns the text ``</s>`` (``<|im_end|>``, ``<end_of_turn>``, ``<image>``...) into its control token
wherever it stands, the user's text included: a response holding its end token as text teaches the model to end
its turn mid-answer and go on, and an image placeholder typed into text makes the processor miscount image
tokens. ``SpecialTokens`` asks the tokenizer and processor which strings those are (never a list per family),
finds them in a row's text fields (not in the templated string, where the chat template puts them on purpose)
and tokenizes a response with them as plain text (``data.special_tokens_in_text=literal``).
"""

from __future__ import annotations

import re

MODES = ("error", "literal")
"""``data.special_tokens_in_text``: ``error`` names the row up front; ``literal`` trains on the text as written."""


class SpecialTokens:
    """The strings a processor's tokenizer reads as control tokens, and how to find and bypass them."""

    def __init__(self, processor, tokenizer):
        self.tokenizer = tokenizer
        roles = {token.content: "a special token" for token in tokenizer.added_tokens_decoder.values()
                 if token.special}
        for name, value in tokenizer.special_tokens_map.items():
            for token in value if isinstance(value, list | tuple) else [value]:
                roles[token] = f"the tokenizer's {name}"
        for name in ("image_token", "boi_token", "eoi_token", "video_token"):
            token = getattr(processor, name, None)
            if isinstance(token, str) and token:
                roles[token] = f"the processor's {name}"
        self.roles = {token: role for token, role in roles.items() if token}
        """token -> what it is, for messages (``'</s>': "the tokenizer's eos_token"``)."""
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in self.roles}
        self.ids = {i for token, i in ids.items() if i is not None and (i != tokenizer.unk_token_id
                                                                         or token == tokenizer.unk_token)}
        """Their ids (a processor's token missing from the vocabulary left out)."""
        # longest first, so that "<|image|>" is not read as a shorter token inside it
        self.pattern = re.compile("|".join(re.escape(token) for token in sorted(self.roles, key=len, reverse=True))
                                  or "(?!)")

    def found(self, messages: list[dict]) -> list[str]:
        """The special tokens written in the text blocks of ``messages``, each once, in order of appearance."""
        hits = [match.group() for message in messages for block in message["content"]
                for match in self.pattern.finditer(block.get("text") or "")]
        return list(dict.fromkeys(hits))

    def describe(self, tokens: list[str]) -> str:
        return ", ".join(f"{token!r} ({self.roles[token]})" for token in tokens)

    def can_split(self) -> bool:
        """Whether the tokenizer reads a special token as plain text when asked (``split_special_tokens``)."""
        token = self.tokenizer.eos_token or next(iter(self.roles))
        try:
            ids = self.tokenizer(token, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        except TypeError:
            return False
        return not set(ids) & self.ids

    def encode_literal(self, text: str, start: int, stop: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of ``text`` with ``text[start:stop]`` (the row's own text) read as
        plain text and the special tokens around it (the chat template's) as control tokens.

        The text is cut at the template's special tokens only, the cuts the tokenizer makes anyway, so every
        other token is the one the whole text would give."""
        cuts = [match.span() for match in self.pattern.finditer(text, 0, start)]
        cuts += [match.span() for match in self.pattern.finditer(text, stop)]
        ids, offsets, position = [], [], 0
        for cut_start, cut_stop in [*cuts, (len(text), len(text))]:
            for piece_start, piece_stop, literal in ((position, cut_start, True), (cut_start, cut_stop, False)):
                if piece_stop > piece_start:
                    encoded = self.tokenizer(text[piece_start:piece_stop], add_special_tokens=False,
                                             return_offsets_mapping=True, split_special_tokens=literal)
                    ids += encoded["input_ids"]
                    offsets += [(a + piece_start, b + piece_start) for a, b in encoded["offset_mapping"]]
            position = cut_stop
        return ids, offsets
