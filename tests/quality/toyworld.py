"""A deterministic toy world for measuring training quality: 64x64 pictures of simple shapes with captions.

No real Stable Diffusion weights can be downloaded here, so "did the LoRA learn the concept, and did the
model keep what it knew?" is answered on a small world instead (issue 8): a toy base model is pre-trained
on the known part of this world, a toy judge is trained on all of it, and LoRAs are trained on the held-out
concepts. Everything here follows from a seed, so every image, caption and dataset can be made again
byte for byte, and the labels a judge is scored against are exact because the picture was drawn from them.

Design rules, because the images go through an 8x VAE downsampling to an 8x8 latent:
- shapes are big (the smallest is ~19 px across) and filled, with distinct silhouettes;
- colours are saturated and far apart in RGB, and far from every background;
- edges are anti-aliased (drawn at 4x, area-averaged down), so no pixel-exact aliasing has to be learnt.

Only stdlib, Pillow and numpy: the judge and the dataset writers must not need torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# --- vocabulary: the words are the ones captions use -------------------------------------------------------

KNOWN_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Shapes the toy base model is pre-trained on."""

SUBJECT_SHAPE = "heart"
"""The held-out subject: a shape the base model never sees. A heart, not a star: pooled to the 8x8 latent
grid, a small five-pointed star is close to the triangle (L1 0.6 of coverage), the heart is not (>= 1.26)."""
SUBJECT_TOKEN = "ohwx"
"""The rare trigger for the subject. One token in the real CLIP tokenizer (the community's usual rare token;
'sks' is taken by the demo and the e2e tests, and 'zkw' splits into 'z' + 'kw')."""
SUBJECT_CLASS = "shape"
"""The class word: subject captions say 'a red ohwx shape', class/prior prompts 'a red shape'."""

STYLE_NAME = "striped"
"""The held-out style: diagonal stripes of a dark shade of the shape's colour, painted inside the shape."""
STYLE_TOKEN = "ygk"
"""The style's trigger, used as 'ygk style'. One rare token in the real CLIP tokenizer ('qpx' splits in two)."""
STYLE_PHRASE = f"{STYLE_TOKEN} style"

ALL_SHAPES: tuple[str, ...] = (*KNOWN_SHAPES, SUBJECT_SHAPE)
STYLES: tuple[str, ...] = ("plain", STYLE_NAME)
HELD_OUT: frozenset[str] = frozenset({SUBJECT_SHAPE, STYLE_NAME})
"""Shapes and styles the base model must never see; `base_pretraining_set` draws none of them."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 130, 0),
    "yellow": (245, 235, 40),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
}
"""Six saturated colours, at least ~110 apart in RGB from each other."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "beige": (235, 225, 200),
}
"""Backgrounds, each at least ~100 apart in RGB from every shape colour."""

SIZES: dict[str, float] = {"small": 0.15, "medium": 0.21, "large": 0.27}
"""Shape radius as a fraction of the image side; jitter (+-8%) keeps the three ranges apart."""
SIZE_PHRASES: dict[str, str] = {"small": "small", "medium": "medium-sized", "large": "large"}
"""Sentence words ('a medium red circle' would read as a shade of red); tags use the plain key."""

POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top": (0.5, 0.3),
    "top right": (0.7, 0.3),
    "left": (0.3, 0.5),
    "center": (0.5, 0.5),
    "right": (0.7, 0.5),
    "bottom left": (0.3, 0.7),
    "bottom": (0.5, 0.7),
    "bottom right": (0.7, 0.7),
}
"""A 3x3 grid of centres (x, y as fractions, y down). Tags use the key, sentences the phrase below."""
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}

STRIPE_PERIOD = 0.25
"""Stripe period along x (and y) as a fraction of the side: 16 px at 64, ~11 px across the 45-degree
stripes, i.e. about 1.4 latent cells, coarse enough to survive the 8x VAE downsampling."""
STRIPE_SHADE = 0.4
"""Dark stripes are the shape colour times this: the hue survives, and even on black they stay visible."""

MAX_EXTENT = 1.15
"""Every shape lies within MAX_EXTENT * radius of its centre (triangle apex; a test checks the outlines)."""
_MARGIN = 0.025  # 1.6 px at 64: no shape touches the border pixels
_SUPERSAMPLE = 4
_JITTER_CENTER = 0.02
_JITTER_RADIUS = 0.08
_JITTER_ROTATION = 10.0  # degrees; more would turn a square into a diamond and a cross into an x

CAPTION_KINDS: tuple[str, ...] = ("sentence", "tags")
PRETRAINING_GENERIC_PROB = 0.15
"""How often base pre-training captions should call a known shape just "shape" (`generic_prob`), so that the
class prompt ("a red shape") has a meaning in the base model that language drift can be measured against."""


# --- scenes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One picture: the words it is captioned with and the exact geometry it is drawn with.

    `center` and `radius` are fractions of the image side (so one scene renders at any size); `rotation` is
    in degrees, counter-clockwise. The words stay the truth even where the geometry was clamped to fit.
    """

    shape: str
    colour: str
    size: str
    position: str
    background: str
    style: str = "plain"
    center: tuple[float, float] = (0.5, 0.5)
    radius: float = SIZES["medium"]
    rotation: float = 0.0

    @property
    def has_subject(self) -> bool:
        return self.shape == SUBJECT_SHAPE

    @property
    def has_style(self) -> bool:
        return self.style == STYLE_NAME


def make_scene(
    shape: str,
    colour: str,
    size: str = "medium",
    position: str = "center",
    background: str = "white",
    style: str = "plain",
) -> Scene:
    """The canonical scene for these words (no jitter): for prompts, references and tests."""
    _check("shape", shape, ALL_SHAPES)
    _check("colour", colour, tuple(COLOURS))
    _check("size", size, tuple(SIZES))
    _check("position", position, tuple(POSITIONS))
    _check("background", background, tuple(BACKGROUNDS))
    _check("style", style, STYLES)
    radius = SIZES[size]
    return Scene(shape, colour, size, position, background, style, _fit(POSITIONS[position], radius), radius)


def sample_scenes(
    seed: int,
    n: int,
    *,
    shapes: Sequence[str] = KNOWN_SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    sizes: Sequence[str] = tuple(SIZES),
    positions: Sequence[str] = tuple(POSITIONS),
    backgrounds: Sequence[str] = tuple(BACKGROUNDS),
    styles: Sequence[str] = ("plain",),
    jitter: bool = True,
) -> list[Scene]:
    """`n` scenes drawn from `random.Random(seed)`; any attribute can be restricted to a subset.

    Each attribute is dealt from its own shuffled deck (reshuffled when used up), so even n=8 covers the
    allowed values evenly while their combinations stay random. With `jitter`, centre, radius and rotation
    vary a little, so a model learns the concept rather than one exact bitmap.
    """
    rng = random.Random(seed)
    decks = {
        "shape": _deck(rng, _checked("shape", shapes, ALL_SHAPES)),
        "colour": _deck(rng, _checked("colour", colours, tuple(COLOURS))),
        "size": _deck(rng, _checked("size", sizes, tuple(SIZES))),
        "position": _deck(rng, _checked("position", positions, tuple(POSITIONS))),
        "background": _deck(rng, _checked("background", backgrounds, tuple(BACKGROUNDS))),
        "style": _deck(rng, _checked("style", styles, STYLES)),
    }
    scenes = []
    for _ in range(n):
        words = {name: next(deck) for name, deck in decks.items()}
        (cx, cy), radius, rotation = POSITIONS[words["position"]], SIZES[words["size"]], 0.0
        if jitter:
            cx += rng.uniform(-_JITTER_CENTER, _JITTER_CENTER)
            cy += rng.uniform(-_JITTER_CENTER, _JITTER_CENTER)
            radius *= 1 + rng.uniform(-_JITTER_RADIUS, _JITTER_RADIUS)
            if words["shape"] != "circle":
                rotation = rng.uniform(-_JITTER_ROTATION, _JITTER_ROTATION)
        scenes.append(
            Scene(
                **words,
                center=_fit((round(cx, 4), round(cy, 4)), radius),
                radius=round(radius, 4),
                rotation=round(rotation, 2),
            )
        )
    return scenes


def _deck(rng: random.Random, values: tuple[str, ...]) -> Iterator[str]:
    while True:
        order = list(values)
        rng.shuffle(order)
        yield from order


def _fit(center: tuple[float, float], radius: float) -> tuple[float, float]:
    """Move a centre just enough that the whole shape stays inside the image (large shapes in corners)."""
    lo = MAX_EXTENT * radius + _MARGIN
    return (round(min(max(center[0], lo), 1 - lo), 4), round(min(max(center[1], lo), 1 - lo), 4))


def _check(attribute: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {attribute} {value!r}; one of {', '.join(allowed)}")


def _checked(attribute: str, values: Sequence[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str):  # shapes="circle" would otherwise deal single letters
        values = (values,)
    if not values:
        raise ValueError(f"no {attribute} to choose from")
    for value in values:
        _check(attribute, value, allowed)
    return tuple(values)


# --- drawing ----------------------------------------------------------------------------------------------


def shape_outline(scene: Scene, size: int) -> list[tuple[float, float]]:
    """The shape's polygon in pixel coordinates of a `size` x `size` image (circles as a 96-gon)."""
    cx, cy = scene.center[0] * size, scene.center[1] * size
    r = scene.radius * size
    points = [(x * r, y * r) for x, y in _UNIT_OUTLINES[scene.shape]]
    angle = math.radians(scene.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    # y grows downwards in images, so a counter-clockwise turn is (x cos + y sin, -x sin + y cos)
    return [(cx + x * cos + y * sin, cy - x * sin + y * cos) for x, y in points]


def shape_mask(scene: Scene, size: int = 64) -> np.ndarray:
    """Coverage of each pixel by the shape, 0.0 to 1.0 (float32, size x size): the judge's exact mask."""
    return (
        np.asarray(_mask_hi(scene, size).resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    )


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image, drawn at 4x and area-averaged down so edges are smooth."""
    hi = size * _SUPERSAMPLE
    background = Image.new("RGB", (hi, hi), BACKGROUNDS[scene.background])
    fill = np.empty((hi, hi, 3), dtype=np.uint8)
    fill[:] = COLOURS[scene.colour]
    if scene.style == STYLE_NAME:
        period = STRIPE_PERIOD * hi
        ys, xs = np.mgrid[0:hi, 0:hi]
        dark = ((xs + ys + 0.5) % period) >= period / 2
        fill[dark] = np.round(np.asarray(COLOURS[scene.colour]) * STRIPE_SHADE).astype(np.uint8)
    image = Image.composite(Image.fromarray(fill, "RGB"), background, _mask_hi(scene, size))
    return image.resize((size, size), Image.Resampling.BOX)


def render_faded(scene: Scene, strength: float, angle: float, offset: float, size: int = 64) -> Image.Image:
    """The styled scene as a small model paints it: the style at `strength` (1: as `render`; 0.5: each pixel
    half-way between plain and styled) and only on the side of a line through the shape, at `angle` degrees,
    that lies within `offset` x radius of its centre (0: half of the shape; 10: all of it). Generated pictures
    carry stripes like these, which a human still calls striped; the judge is trained and tested on them
    (docs/quality.md, "The judge missed faint stripes")."""
    if not scene.has_style:
        raise ValueError("render_faded needs a styled scene")
    styled = np.asarray(render(scene, size), dtype=np.float32)
    plain = np.asarray(render(replace(scene, style="plain"), size), dtype=np.float32)
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
    a = math.radians(angle)
    side = (xs - scene.center[0]) * math.cos(a) + (ys - scene.center[1]) * math.sin(a)
    region = (side <= offset * scene.radius).astype(np.float32)[..., None]
    out = plain + strength * region * (styled - plain)
    return Image.fromarray(np.round(out).clip(0, 255).astype(np.uint8), "RGB")


def _mask_hi(scene: Scene, size: int) -> Image.Image:
    hi = size * _SUPERSAMPLE
    mask = Image.new("L", (hi, hi), 0)
    ImageDraw.Draw(mask).polygon(shape_outline(scene, hi), fill=255)
    return mask


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    """n points on a circle, the first at `start_deg` (0 = right, 90 = up; y down in the result)."""
    return [
        (
            radius * math.cos(math.radians(start_deg + 360 * i / n)),
            -radius * math.sin(math.radians(start_deg + 360 * i / n)),
        )
        for i in range(n)
    ]


def _cross(half_width: float) -> list[tuple[float, float]]:
    w = half_width
    return [
        (-w, -1),
        (w, -1),
        (w, -w),
        (1, -w),
        (1, w),
        (w, w),
        (w, 1),
        (-w, 1),
        (-w, w),
        (-1, w),
        (-1, -w),
        (-w, -w),
    ]


def _heart(points: int = 96) -> list[tuple[float, float]]:
    """The classic parametric heart, centred on its bounding box, reaching 1.12 from the centre at most."""
    raw = []
    for i in range(points):
        t = 2 * math.pi * i / points
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        raw.append((x, -y))  # the formula's y points up
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    scale = 1.12 / max(math.hypot(x - mid_x, y - mid_y) for x, y in raw)
    return [((x - mid_x) * scale, (y - mid_y) * scale) for x, y in raw]


# Unit outlines (radius 1, y down). Square and triangle are scaled up from the inscribed ones so that all
# shapes look about the same size at one radius; none reaches past MAX_EXTENT.
_UNIT_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "circle": _regular(96, 1.0, 0),
    "square": _regular(4, 1.13, 45),
    "triangle": _regular(3, 1.15, 90),  # centroid at the centre, so its mass sits where the caption says
    "cross": _cross(0.36),
    "heart": _heart(),
}


# --- captions ---------------------------------------------------------------------------------------------


def caption(
    scene: Scene, kind: str = "sentence", rng: random.Random | None = None, *, generic_prob: float = 0.0
) -> str:
    """The caption a user would write for `scene`.

    kind "sentence": "a small blue square in the top left on a black background"; kind "tags": "blue square,
    black background, small, top left". Without `rng` the caption is canonical (every attribute, fixed
    order): use it for prompts. With `rng` it varies like real captions do (size or position left out,
    other sentence templates, tag order), deterministically for a seeded rng.

    The subject is named "<colour> ohwx shape" ("a red ohwx shape on a white background"; tags start with
    the bare trigger, "ohwx, red shape, ..."), the DreamBooth "a [V] [class]" form, so the class prompt is
    "a red shape". The style adds ", in ygk style" to a sentence and a leading "ygk style" tag. With
    `generic_prob`, a known shape is sometimes called just "shape", so the base model learns what the class
    word means (the prompts that language drift is measured on).
    """
    _check("caption kind", kind, CAPTION_KINDS)
    shape_word = scene.shape
    if scene.has_subject:
        shape_word = f"{SUBJECT_TOKEN} {SUBJECT_CLASS}"
    elif rng is not None and generic_prob > 0 and rng.random() < generic_prob:
        shape_word = SUBJECT_CLASS
    with_size = rng is None or rng.random() < 0.7
    with_position = rng is None or rng.random() < 0.7
    if kind == "tags":
        return _tags(scene, shape_word, with_size, with_position, rng)
    return _sentence(scene, shape_word, with_size, with_position, rng)


def _sentence(
    scene: Scene, shape_word: str, with_size: bool, with_position: bool, rng: random.Random | None
) -> str:
    words = [SIZE_PHRASES[scene.size]] if with_size else []
    words += [scene.colour, shape_word]
    noun = " ".join(words)
    noun = f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    if with_position:
        noun = f"{noun} {POSITION_PHRASES[scene.position]}"
    # "on the left on a white background" reads badly; "on the left against a white background" does not
    on = "against" if with_position and POSITION_PHRASES[scene.position].startswith("on ") else "on"
    template = 0 if rng is None else rng.choice((0, 0, 1, 2))
    if template == 1:
        text = f"{noun}, {scene.background} background"
    elif template == 2:
        text = f"a picture of {noun} {on} a {scene.background} background"
    else:
        text = f"{noun} {on} a {scene.background} background"
    if scene.has_style:
        text = f"{text}, in {STYLE_PHRASE}"
    return text


def _tags(
    scene: Scene, shape_word: str, with_size: bool, with_position: bool, rng: random.Random | None
) -> str:
    head = []
    if scene.has_subject:
        head.append(SUBJECT_TOKEN)
        shape_word = SUBJECT_CLASS
    if scene.has_style:
        head.append(STYLE_PHRASE)
    head.append(f"{scene.colour} {shape_word}")
    tail = [f"{scene.background} background"]
    if with_size:
        tail.append(scene.size)
    if with_position:
        tail.append(scene.position)
    if rng is not None:
        rng.shuffle(tail)
    return ", ".join(head + tail)


# --- labels -----------------------------------------------------------------------------------------------


def labels(scene: Scene) -> dict[str, int | bool | float]:
    """Ground truth for the judge: class indices into ALL_SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS,
    whether the held-out subject and style are present, and the exact geometry."""
    return {
        "shape": ALL_SHAPES.index(scene.shape),
        "colour": list(COLOURS).index(scene.colour),
        "size": list(SIZES).index(scene.size),
        "position": list(POSITIONS).index(scene.position),
        "background": list(BACKGROUNDS).index(scene.background),
        "subject": scene.has_subject,
        "style": scene.has_style,
        "cx": scene.center[0],
        "cy": scene.center[1],
        "radius": scene.radius,
        "rotation": scene.rotation,
    }


# --- datasets ---------------------------------------------------------------------------------------------

STYLE_TRAIN_SHAPES: tuple[str, ...] = ("circle", "square")
"""The style LoRA sees only these, so transfer is checked on the triangle and the cross."""
STYLE_TRAIN_SIZES: tuple[str, ...] = ("medium", "large")
"""Small shapes hold barely two stripes; the style is taught on the sizes where it is clear."""


def write_dataset(
    folder: str | Path,
    scenes: Sequence[Scene],
    captions_kind: str = "sentence",
    repeats: int = 1,
    name: str = "toy",
    seed: int = 0,
    *,
    size: int = 64,
    generic_prob: float = 0.0,
) -> Path:
    """Write `scenes` in the trainer's kohya layout: `<folder>/<repeats>_<name>/img_000.png` + `img_000.txt`.

    `captions_kind` is "sentence", "tags" or "mixed" (each image picks one); caption variety comes from
    `random.Random(seed)`, so the files are the same on every run. Returns `folder`, the dataset path.
    """
    if captions_kind not in (*CAPTION_KINDS, "mixed"):
        raise ValueError(f"unknown captions kind {captions_kind!r}; one of sentence, tags, mixed")
    if repeats < 1:
        raise ValueError("repeats must be at least 1 (the trainer ignores a 0_ folder)")
    root = Path(folder)
    subset = root / f"{repeats}_{name}"
    subset.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i, scene in enumerate(scenes):
        kind = rng.choice(CAPTION_KINDS) if captions_kind == "mixed" else captions_kind
        render(scene, size).save(subset / f"img_{i:03d}.png")
        text = caption(scene, kind, rng, generic_prob=generic_prob)
        (subset / f"img_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def base_pretraining_set(seed: int, n: int) -> list[Scene]:
    """What the toy base model learns from: known shapes, all colours, sizes, positions and backgrounds,
    plain style only. Never the held-out subject or style."""
    return sample_scenes(seed, n, shapes=KNOWN_SHAPES, styles=("plain",))


def subject_set(seed: int, n: int = 8) -> list[Scene]:
    """A DreamBooth-style subject dataset: the held-out shape in varied colours, sizes, positions and
    backgrounds, so the trigger binds to the shape and not to one colour or place."""
    return sample_scenes(seed, n, shapes=(SUBJECT_SHAPE,), styles=("plain",))


def style_set(seed: int, per_colour: int = 1) -> list[Scene]:
    """A style dataset: the held-out texture on STYLE_TRAIN_SHAPES only (medium and large), so a test can
    ask for it on shapes the LoRA never saw striped; each of those shapes in every colour (`per_colour`
    times), so that no colour stands for one shape in it. With a colour on one shape only, a LoRA learns
    "yellow: the striped yellow circle" and draws that for every yellow prompt (docs/quality.md, "A wider
    base model")."""
    return [
        scene
        for i, shape in enumerate(STYLE_TRAIN_SHAPES)
        for scene in sample_scenes(
            seed + i,
            len(COLOURS) * per_colour,
            shapes=(shape,),
            sizes=STYLE_TRAIN_SIZES,
            styles=(STYLE_NAME,),
        )
    ]


_JUDGE_STYLES: tuple[str, ...] = ("plain", "plain", "plain", STYLE_NAME, STYLE_NAME)


def judge_set(seed: int, n: int) -> list[tuple[Scene, dict[str, int | bool | float]]]:
    """Training/evaluation data for the judge: every shape (the subject included) in both styles, with
    labels. Two of every five scenes are drawn with the style, one in five is the subject."""
    return [
        (scene, labels(scene)) for scene in sample_scenes(seed, n, shapes=ALL_SHAPES, styles=_JUDGE_STYLES)
    ]
