"""The shapes world: scenes of 1-4 coloured shapes on a 2x2 grid, and how to draw them.

Every scene is its own ground truth: what `sample_scene` returns is exactly what `draw_scene`
paints, so captions, questions and hallucination metrics can be checked against it without a
human in the loop.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated and far apart in RGB (smallest pairwise distance ~130), none near the light-grey
# background, so a colour survives noise and downsampling. Names avoid leading vowels so the
# article is always "a".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 180),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
# Reading order: the canonical caption lists objects in this order.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

BACKGROUND_RGB: tuple[int, int, int] = (225, 225, 225)
BACKGROUNDS: tuple[str, ...] = ("plain", "noisy")
# Per-channel uniform noise in [-NOISE_AMPLITUDE, NOISE_AMPLITUDE]; far below the distance
# between palette colours, so every pixel keeps the nearest colour it was drawn with.
NOISE_AMPLITUDE = 16
# Half-extent of a shape as a fraction of its grid cell's side.
_HALF_EXTENT = {"small": 0.24, "large": 0.42}

MAX_OBJECTS = len(POSITIONS)


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape in one grid cell."""

    colour: str
    """A key of `COLOURS`."""
    shape: str
    """One of `SHAPES`."""
    size: str
    """One of `SIZES`."""
    position: str
    """One of `POSITIONS`; one object per cell, so objects never overlap."""

    def __post_init__(self) -> None:
        for value, allowed, field in (
            (self.colour, tuple(COLOURS), "colour"),
            (self.shape, SHAPES, "shape"),
            (self.size, SIZES, "size"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {allowed}")

    @property
    def name(self) -> str:
        """Canonical object name, e.g. "red circle" (size is not part of an object's identity)."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A set of objects, at most one per grid cell and no two with the same colour and shape."""

    objects: tuple[ShapeObject, ...]
    """The objects, always in `POSITIONS` order (the canonical caption order)."""

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", ordered)
        if not 1 <= len(ordered) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(ordered)}")
        positions = [o.position for o in ordered]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two objects share a grid cell: {positions}")
        names = [o.name for o in ordered]
        if len(set(names)) != len(names):
            raise ValueError(f"two objects share colour and shape, mentions would be ambiguous: {names}")

    @property
    def names(self) -> list[str]:
        """Canonical object names in caption order."""
        return [o.name for o in self.objects]

    def has(self, colour: str, shape: str) -> bool:
        """Whether an object of this colour and shape is in the scene (any size)."""
        return any(o.colour == colour and o.shape == shape for o in self.objects)

    def absent_pairs(self) -> list[tuple[str, str]]:
        """All (colour, shape) pairs not in the scene, in a fixed order."""
        return [(c, s) for c in COLOURS for s in SHAPES if not self.has(c, s)]

    def free_positions(self) -> list[str]:
        """Grid cells with no object, in reading order."""
        taken = {o.position for o in self.objects}
        return [p for p in POSITIONS if p not in taken]

    def to_json(self) -> str:
        """A compact JSON string from which `Scene.from_json` rebuilds this scene."""
        return json.dumps([asdict(o) for o in self.objects], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        """Inverse of `to_json`."""
        return cls(tuple(ShapeObject(**o) for o in json.loads(text)))


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = MAX_OBJECTS) -> Scene:
    """Draw a scene with a uniform number of objects in [min_objects, max_objects].

    Cells are picked without replacement and (colour, shape) pairs are distinct, so every
    object is unambiguously named by its colour and shape.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}")
    num_objects = rng.randint(min_objects, max_objects)
    positions = rng.sample(POSITIONS, num_objects)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], num_objects)
    objects = tuple(
        ShapeObject(colour=c, shape=s, size=rng.choice(SIZES), position=p)
        for (c, s), p in zip(pairs, positions)
    )
    return Scene(objects)


def cell_box(position: str, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom), right/bottom exclusive, of a grid cell."""
    half = image_size // 2
    row, col = divmod(POSITIONS.index(position), 2)
    return col * half, row * half, (col + 1) * half, (row + 1) * half


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, image_size: int) -> None:
    left, top, right, bottom = cell_box(obj.position, image_size)
    cx, cy = (left + right - 1) / 2, (top + bottom - 1) / 2
    r = _HALF_EXTENT[obj.size] * (right - left)
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_shape_points(obj.shape, cx, cy, r), fill=fill)


def draw_scene(
    scene: Scene,
    image_size: int = 64,
    background: str = "plain",
    rng: random.Random | None = None,
) -> Image.Image:
    """Paint a scene as an RGB image of side `image_size`.

    `background="plain"` is flat light grey; `"noisy"` adds per-pixel, per-channel uniform noise
    of amplitude `NOISE_AMPLITUDE` to the whole image (objects included), too small to move any
    pixel nearer another palette colour. Noise comes from `rng`; without one it is seeded by the
    scene itself, so a scene always draws to the same pixels.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background={background!r} is not one of {BACKGROUNDS}")
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw small shapes; use 16 or more")
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, image_size)
    if background == "noisy":
        rng = rng if rng is not None else random.Random(scene.to_json())
        noise_rng = np.random.default_rng(rng.getrandbits(64))
        noise = noise_rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(image_size, image_size, 3))
        pixels = np.asarray(image, dtype=np.int16) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image
