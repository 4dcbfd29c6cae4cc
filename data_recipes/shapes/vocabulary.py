"""Object vocabulary of the shapes world, for CHAIR-style hallucination metrics.

An object's identity is its colour and shape ("red circle"); size is an adjective and does not
make a different object.
"""

from __future__ import annotations

import re

from .world import COLOURS, SHAPES, Scene


def _surface_forms(colour: str, shape: str) -> list[str]:
    return [f"{colour} {shape}", f"{colour} {shape}s"]


SHAPES_VOCABULARY: dict[str, list[str]] = {
    f"{colour} {shape}": _surface_forms(colour, shape) for colour in COLOURS for shape in SHAPES
}
"""Canonical object name -> lowercase surface forms (singular and plural)."""

_SURFACE_TO_CANONICAL = {form: name for name, forms in SHAPES_VOCABULARY.items() for form in forms}
# Longest first so "red circles" is not cut to "red circle" + "s".
_MENTION_RE = re.compile(
    r"\b(" + "|".join(re.escape(f) for f in sorted(_SURFACE_TO_CANONICAL, key=len, reverse=True)) + r")\b"
)


def objects_in_scene(scene: Scene) -> list[str]:
    """Canonical names of the scene's objects, in caption order."""
    return scene.names


def mentioned_objects(text: str) -> list[str]:
    """Canonical names of the objects `text` mentions, in order of first mention, no repeats."""
    found = (_SURFACE_TO_CANONICAL[m] for m in _MENTION_RE.findall(text.lower()))
    return list(dict.fromkeys(found))
