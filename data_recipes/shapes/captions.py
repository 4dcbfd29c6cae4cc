"""Caption text for shapes-world scenes: ground truth, yes/no questions, hallucinated rewrites.

The grammar is tiny and regular so a model trained from scratch can learn it:

    caption  := mention "." | mention " and " mention "." | mention ", " ... " and " mention "."
    mention  := "a " size " " colour " " shape          e.g. "a large red circle"

Objects are listed in grid reading order (top left, top right, bottom left, bottom right).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from .world import COLOURS, SHAPES, SIZES, Scene, ShapeObject

DESCRIBE_PROMPT = "Describe the image."


def mention(obj: ShapeObject, with_size: bool = True) -> str:
    """Noun phrase for one object: "a large red circle" (or "a red circle" without size)."""
    size = f"{obj.size} " if with_size else ""
    return f"a {size}{obj.colour} {obj.shape}"


def describe(objects: Sequence[ShapeObject], with_size: bool = True) -> str:
    """Caption listing `objects` in the given order: "a x, a y and a z."."""
    if not objects:
        raise ValueError("cannot describe an empty list of objects")
    mentions = [mention(o, with_size) for o in objects]
    if len(mentions) == 1:
        return f"{mentions[0]}."
    return f"{', '.join(mentions[:-1])} and {mentions[-1]}."


_MENTION = rf"a (?:(?:{'|'.join(SIZES)}) )?(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_CAPTION_RE = re.compile(rf"{_MENTION}(?:(?:, {_MENTION})* and {_MENTION})?\.")


def well_formed(text: str) -> bool:
    """Whether ``text`` is a caption of the grammar above, whatever objects it names: what a degenerate caption
    ("a large green diamondNoNoNo...", seen when DPO pushed down the only grammatical continuation) is not."""
    return _CAPTION_RE.fullmatch(text.strip()) is not None


def caption(scene: Scene, with_size: bool = True) -> str:
    """Ground-truth caption: every object of the scene, once, in reading order."""
    return describe(scene.objects, with_size)


def question(colour: str, shape: str) -> str:
    """Yes/no question asking whether a (colour, shape) object is present."""
    return f"is there a {colour} {shape} in the image?"


def yes_no_questions(
    scene: Scene, rng: random.Random, n_pos: int = 2, n_neg: int = 2
) -> list[tuple[str, str]]:
    """Shuffled (question, answer) pairs: up to `n_pos` about present objects ("yes") and
    up to `n_neg` about absent (colour, shape) pairs ("no"), without repeats.

    Fewer positives come back when the scene has fewer than `n_pos` objects.
    """
    present = rng.sample(scene.objects, min(n_pos, len(scene.objects)))
    absent_pairs = scene.absent_pairs()
    absent = rng.sample(absent_pairs, min(n_neg, len(absent_pairs)))
    items = [(question(o.colour, o.shape), "yes") for o in present]
    items += [(question(c, s), "no") for c, s in absent]
    rng.shuffle(items)
    return items


def _absent_object(scene: Scene, rng: random.Random) -> ShapeObject:
    colour, shape = rng.choice(scene.absent_pairs())
    # The position only has to be valid; it never reaches the caption text.
    position = (scene.free_positions() or [scene.objects[-1].position])[0]
    return ShapeObject(colour=colour, shape=shape, size=rng.choice(SIZES), position=position)


# Web captions mention some objects far more often than others; their noise does too. A fixed ranking of
# the (colour, shape) pairs, with Zipf weights 1/rank, gives the base model a co-occurrence prior that it
# follows when unsure: the popular-object hallucination that POPE's "popular" split probes.
POPULARITY = [(c, s) for c, s in random.Random("shapes-popularity").sample(
    [(c, s) for c in COLOURS for s in SHAPES], len(COLOURS) * len(SHAPES))]


def popular_absent_object(scene: Scene, rng: random.Random) -> ShapeObject:
    """An absent object drawn with ``POPULARITY``'s Zipf weights: the kind noisy captions add."""
    absent = set(scene.absent_pairs())
    ranked = [pair for pair in POPULARITY if pair in absent]
    weights = [1.0 / (POPULARITY.index(pair) + 1) for pair in ranked]
    colour, shape = rng.choices(ranked, weights=weights)[0]
    position = (scene.free_positions() or [scene.objects[-1].position])[0]
    return ShapeObject(colour=colour, shape=shape, size=rng.choice(SIZES), position=position)


def popular_present_object(scene: Scene, rng: random.Random) -> ShapeObject:
    """A present object drawn with ``POPULARITY``'s Zipf weights, as ``popular_absent_object`` draws an absent
    one: questions about the habit's objects then come both present and absent."""
    weights = [1.0 / (POPULARITY.index((o.colour, o.shape)) + 1) for o in scene.objects]
    return rng.choices(scene.objects, weights=weights)[0]


def _swap_options(scene: Scene, attribute: str) -> list[tuple[int, str]]:
    """(object index, new value) pairs that turn an object into one absent from the scene."""
    values = SHAPES if attribute == "shape" else tuple(COLOURS)
    options = []
    for i, obj in enumerate(scene.objects):
        for value in values:
            colour = value if attribute == "colour" else obj.colour
            shape = value if attribute == "shape" else obj.shape
            if not scene.has(colour, shape):
                options.append((i, value))
    return options


def _swap(scene: Scene, rng: random.Random, attribute: str) -> str:
    options = _swap_options(scene, attribute)
    if not options:
        raise ValueError(f"no object in {scene.names} can change {attribute} to an absent object")
    index, value = rng.choice(options)
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **{attribute: value})
    return describe(objects)


def add_object(scene: Scene, rng: random.Random) -> str:
    """Ground-truth caption with one absent object appended at the end."""
    return describe([*scene.objects, _absent_object(scene, rng)])


def swap_shape(scene: Scene, rng: random.Random) -> str:
    """Ground-truth caption with one object's shape changed so it names an absent object.

    Raises ValueError when impossible (all four shapes of the only colour are present).
    """
    return _swap(scene, rng, "shape")


def swap_colour(scene: Scene, rng: random.Random) -> str:
    """Ground-truth caption with one object's colour changed so it names an absent object."""
    return _swap(scene, rng, "colour")


def swap_binding(scene: Scene, rng: random.Random) -> str | None:
    """Ground-truth caption with the colours of two objects swapped ("a red circle and a blue square" ->
    "a blue circle and a red square"): the same colours and shapes, bound wrongly. ``None`` when no two
    objects differ in both colour and shape. A contrastive model that must reject these learns to bind
    colour to shape, which plain image-caption batches rarely demand (NegCLIP, arXiv:2210.01936)."""
    pairs = [(i, j) for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects)
             if i < j and a.colour != b.colour and a.shape != b.shape]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    objects = list(scene.objects)
    objects[i], objects[j] = (replace(objects[i], colour=objects[j].colour),
                              replace(objects[j], colour=objects[i].colour))
    return describe(objects)


def binding_negatives(scenes: Sequence[Scene], seed: int) -> list[str]:
    """One wrong caption per scene, for a contrastive judge's hard negatives: colours swapped between two
    objects (``swap_binding``), or, where no two objects differ in both, one object's colour changed
    (``swap_colour``). Scene i's caption depends only on (seed, i)."""
    out = []
    for index, scene in enumerate(scenes):
        rng = random.Random(f"binding-{seed}-{index}")
        out.append(swap_binding(scene, rng) or swap_colour(scene, rng))
    return out


def insert_object(scene: Scene, rng: random.Random) -> str:
    """Ground-truth caption with one absent object inserted at a random place in the list: the error
    a model pretrained on noisy web captions (``noisy_web_caption``) makes."""
    return noisy_web_caption(scene, rng)


HALLUCINATIONS: dict[str, Callable[[Scene, random.Random], str]] = {
    "add_object": add_object,
    "insert_object": insert_object,
    "swap_shape": swap_shape,
    "swap_colour": swap_colour,
}
"""POVID-style rewrites (arXiv:2402.11411): each returns a caption naming at least one object
that is not in the scene."""


def applicable_hallucinations(scene: Scene) -> list[str]:
    """Names in `HALLUCINATIONS` that can rewrite this scene's caption."""
    kinds = ["add_object", "insert_object"]
    kinds += [f"swap_{a}" for a in ("shape", "colour") if _swap_options(scene, a)]
    return kinds


def hallucinate(scene: Scene, rng: random.Random) -> str:
    """A hallucinated caption from one rewrite drawn uniformly among those that apply."""
    kind = rng.choice(applicable_hallucinations(scene))
    return HALLUCINATIONS[kind](scene, rng)


def noisy_web_caption(scene: Scene, rng: random.Random) -> str:
    """Ground-truth caption plus one absent object, drawn by ``POPULARITY``, inserted at a random place.

    Used as noisy pretraining text so the base model learns to hallucinate; the random place
    keeps the model from learning that only the last mention can be wrong.
    """
    objects = list(scene.objects)
    objects.insert(rng.randint(0, len(objects)), popular_absent_object(scene, rng))
    return describe(objects)
