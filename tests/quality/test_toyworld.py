"""The toy world generator (issue 8): deterministic, distinguishable, held-out concepts kept out of the base
set, captions that name what is drawn, and datasets the trainer's own scanner reads."""

from __future__ import annotations

import io
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from lib_trainer.data.scan import scan_dataset

from . import toyworld as tw


def _png(scene: tw.Scene) -> bytes:
    buffer = io.BytesIO()
    tw.render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(scene: tw.Scene) -> np.ndarray:
    return np.asarray(tw.render(scene), dtype=np.float32)


def _drawn(scene: tw.Scene) -> np.ndarray:
    """Pixels that differ from the background, found from the rendered image alone."""
    distance = np.linalg.norm(_pixels(scene) - np.asarray(tw.BACKGROUNDS[scene.background]), axis=-1)
    return distance > 40


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(tw.COLOURS, key=lambda name: float(np.linalg.norm(rgb - np.asarray(tw.COLOURS[name]))))


# --- determinism ------------------------------------------------------------------------------------------


def test_same_seed_same_scenes_images_and_captions():
    a, b = tw.sample_scenes(7, 12), tw.sample_scenes(7, 12)
    assert a == b
    assert [_png(s) for s in a] == [_png(s) for s in b]
    ra, rb = random.Random(3), random.Random(3)
    assert [tw.caption(s, "sentence", ra) for s in a] == [tw.caption(s, "sentence", rb) for s in b]
    assert [tw.caption(s, "tags", ra) for s in a] == [tw.caption(s, "tags", rb) for s in b]


def test_different_seed_different_scenes():
    a, b = tw.sample_scenes(7, 12), tw.sample_scenes(8, 12)
    assert a != b
    assert [_png(s) for s in a] != [_png(s) for s in b]


def test_written_dataset_is_byte_identical_for_a_seed(tmp_path: Path):
    scenes = tw.subject_set(1)

    def files(folder: Path) -> dict[str, bytes]:
        tw.write_dataset(folder, scenes, "mixed", 3, "ohwx shape", seed=5)
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert first == second and len(first) == 16
    tw.write_dataset(tmp_path / "c", scenes, "mixed", 3, "ohwx shape", seed=6)
    captions = {p.name: p.read_bytes() for p in (tmp_path / "c").rglob("*.txt")}
    assert captions != {Path(k).name: v for k, v in first.items() if k.endswith(".txt")}


# --- pictures ---------------------------------------------------------------------------------------------


def test_images_are_64px_rgb_and_shapes_stay_inside():
    for scene in tw.sample_scenes(0, 120, shapes=tw.ALL_SHAPES, sizes=("large",), styles=tw.STYLES):
        image = tw.render(scene)
        assert image.size == (64, 64) and image.mode == "RGB"
        mask = tw.shape_mask(scene)
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.max() == 0, scene  # clamped into the frame even as large shapes in corners
    assert tw.render(tw.make_scene("circle", "red"), size=128).size == (128, 128)


def test_outlines_stay_within_max_extent():
    for shape, outline in tw._UNIT_OUTLINES.items():
        assert max(math.hypot(x, y) for x, y in outline) <= tw.MAX_EXTENT + 1e-9, shape


def test_every_colour_reads_as_itself_on_every_background():
    for shape, colour, background in itertools.product(tw.ALL_SHAPES, tw.COLOURS, tw.BACKGROUNDS):
        scene = tw.make_scene(shape, colour, "medium", "center", background)
        inside = tw.shape_mask(scene) >= 0.999
        mean = _pixels(scene)[inside].mean(axis=0)
        assert _nearest_colour(mean) == colour, scene
        assert (
            np.abs(mean - np.asarray(tw.COLOURS[colour])).max() < 1.0
        )  # flat fill, anti-aliasing only at edges


def test_palette_is_well_separated():
    def distance(a, b) -> float:
        return float(np.linalg.norm(np.subtract(a, b)))

    assert min(distance(a, b) for a, b in itertools.combinations(tw.COLOURS.values(), 2)) > 100
    assert min(distance(a, b) for a in tw.COLOURS.values() for b in tw.BACKGROUNDS.values()) > 100
    # the dark stripes stay visible against every background
    dark = [np.asarray(c) * tw.STRIPE_SHADE for c in tw.COLOURS.values()]
    assert min(distance(a, b) for a in dark for b in tw.BACKGROUNDS.values()) > 40


@pytest.mark.parametrize("size", ["small", "large"])
def test_shapes_differ_in_the_image_and_on_the_latent_grid(size):
    """Silhouettes found from the pixels differ pairwise (IoU), and still differ pooled 8x8, as a VAE sees them."""
    masks = {s: _drawn(tw.make_scene(s, "blue", size, "center", "white")) for s in tw.ALL_SHAPES}
    for a, b in itertools.combinations(tw.ALL_SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.82, (a, b, iou)
        pooled = [m.reshape(8, 8, 8, 8).mean(axis=(1, 3)) for m in (masks[a], masks[b])]
        assert np.abs(pooled[0] - pooled[1]).sum() > 0.7, (a, b)
    # the held-out subject is no closer to a known shape than the known shapes are to each other
    subject = masks[tw.SUBJECT_SHAPE]
    worst_subject = max((subject & masks[k]).sum() / (subject | masks[k]).sum() for k in tw.KNOWN_SHAPES)
    worst_known = max(
        (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        for a, b in itertools.combinations(tw.KNOWN_SHAPES, 2)
    )
    assert worst_subject < worst_known


def test_size_and_position_are_visible():
    areas = [tw.shape_mask(tw.make_scene("circle", "red", s)).sum() for s in tw.SIZES]
    assert areas == sorted(areas) and areas[0] * 2.5 < areas[-1]
    for position, (x, y) in tw.POSITIONS.items():
        mask = tw.shape_mask(tw.make_scene("square", "red", "medium", position))
        ys, xs = np.mgrid[0:64, 0:64]
        cx, cy = (xs * mask).sum() / mask.sum() / 64, (ys * mask).sum() / mask.sum() / 64
        assert abs(cx - x) < 0.02 and abs(cy - y) < 0.02, position


def test_style_paints_dark_diagonal_stripes_inside_the_shape():
    plain = tw.make_scene("triangle", "orange", "large", "center", "black")
    striped = tw.make_scene("triangle", "orange", "large", "center", "black", tw.STYLE_NAME)
    inside = tw.shape_mask(plain) >= 0.999
    a, b = _pixels(plain), _pixels(striped)
    assert np.array_equal(
        a[~(tw.shape_mask(plain) > 0)], b[~(tw.shape_mask(plain) > 0)]
    )  # background untouched
    colour = np.asarray(tw.COLOURS["orange"], dtype=np.float32)
    dark_share = (np.linalg.norm(b[inside] - colour * tw.STRIPE_SHADE, axis=-1) < 10).mean()
    bright_share = (np.linalg.norm(b[inside] - colour, axis=-1) < 10).mean()
    assert 0.3 < dark_share < 0.6 and 0.3 < bright_share < 0.6
    # diagonal: constant along x + y, so the pattern repeats one pixel right and one pixel up
    full = np.asarray(tw.render(tw.make_scene("square", "red", "large", "center", "white", tw.STYLE_NAME)))
    assert np.array_equal(full[28:36, 29:37], full[27:35, 30:38])


def test_render_faded_fades_and_limits_the_stripes():
    scene = tw.make_scene("square", "blue", "large", "center", "white", tw.STYLE_NAME)
    plain = _pixels(tw.make_scene("square", "blue", "large", "center", "white"))
    full = _pixels(scene)
    assert np.abs(np.asarray(tw.render_faded(scene, 1.0, 0, 10.0), dtype=np.float32) - full).max() <= 0.5
    assert np.abs(np.asarray(tw.render_faded(scene, 0.0, 0, 10.0), dtype=np.float32) - plain).max() <= 0.5
    half = np.asarray(tw.render_faded(scene, 0.5, 0, 10.0), dtype=np.float32)
    assert np.allclose(half, (full + plain) / 2, atol=1)
    # angle 0, offset 0: the stripes stay left of the centre line
    left = np.asarray(tw.render_faded(scene, 1.0, 0, 0.0), dtype=np.float32)
    assert np.array_equal(left[:, :31], full[:, :31]) and np.array_equal(left[:, 33:], plain[:, 33:])
    with pytest.raises(ValueError, match="styled"):
        tw.render_faded(tw.make_scene("square", "blue"), 1.0, 0, 0)


# --- held-out concepts and presets ------------------------------------------------------------------------


def test_held_out_flags():
    assert {tw.SUBJECT_SHAPE, tw.STYLE_NAME} == tw.HELD_OUT
    assert tw.SUBJECT_SHAPE not in tw.KNOWN_SHAPES and tw.SUBJECT_SHAPE in tw.ALL_SHAPES
    assert tw.STYLE_NAME in tw.STYLES and len(tw.KNOWN_SHAPES) >= 4


def test_base_pretraining_set_never_shows_held_out_concepts_and_covers_the_rest():
    scenes = tw.base_pretraining_set(0, 400)
    assert not any(s.has_subject or s.has_style for s in scenes)
    assert not {s.shape for s in scenes} & tw.HELD_OUT and {s.style for s in scenes} == {"plain"}
    for attribute, values in [
        ("shape", tw.KNOWN_SHAPES),
        ("colour", tw.COLOURS),
        ("size", tw.SIZES),
        ("position", tw.POSITIONS),
        ("background", tw.BACKGROUNDS),
    ]:
        assert {getattr(s, attribute) for s in scenes} == set(values), attribute
    rng = random.Random(0)
    texts = [tw.caption(s, kind, rng, generic_prob=0.5) for s in scenes for kind in tw.CAPTION_KINDS]
    assert not any(tw.SUBJECT_TOKEN in t or tw.STYLE_TOKEN in t for t in texts)
    assert any(" shape" in t for t in texts)  # the class word, via generic_prob


def test_subject_set_is_the_subject_in_varied_looks():
    scenes = tw.subject_set(0)
    assert len(scenes) == 8 and all(s.shape == tw.SUBJECT_SHAPE and s.style == "plain" for s in scenes)
    assert len({s.colour for s in scenes}) == 6  # dealt from a deck: every colour before any repeats
    assert len({s.position for s in scenes}) == 8 and len({s.background for s in scenes}) == 4


def test_style_set_uses_only_its_subset_of_shapes_each_in_every_colour():
    scenes = tw.style_set(0, per_colour=2)
    assert len(scenes) == 2 * len(tw.COLOURS) * len(tw.STYLE_TRAIN_SHAPES)
    assert {s.shape for s in scenes} == set(tw.STYLE_TRAIN_SHAPES)
    for shape in tw.STYLE_TRAIN_SHAPES:
        colours = [s.colour for s in scenes if s.shape == shape]
        assert sorted(colours) == sorted(list(tw.COLOURS) * 2)
    assert all(s.has_style and not s.has_subject for s in scenes)
    assert {s.size for s in scenes} == set(tw.STYLE_TRAIN_SIZES)
    assert set(tw.KNOWN_SHAPES) - set(tw.STYLE_TRAIN_SHAPES)  # shapes left for the transfer test


def test_judge_set_has_everything_with_labels():
    pairs = tw.judge_set(0, 200)
    assert {s.shape for s, _ in pairs} == set(tw.ALL_SHAPES) and {s.style for s, _ in pairs} == set(tw.STYLES)
    for scene, label in pairs:
        assert label == tw.labels(scene)
        assert (
            tw.ALL_SHAPES[label["shape"]] == scene.shape and list(tw.COLOURS)[label["colour"]] == scene.colour
        )
        assert label["subject"] == (scene.shape == tw.SUBJECT_SHAPE) and label["style"] == scene.has_style
    assert (
        sum(label["subject"] for _, label in pairs) == 40 and sum(label["style"] for _, label in pairs) == 80
    )


def test_sample_scenes_restricts_and_validates():
    scenes = tw.sample_scenes(1, 20, shapes=("triangle",), colours=("red", "blue"), backgrounds="black")
    assert {s.shape for s in scenes} == {"triangle"} and {s.colour for s in scenes} == {"red", "blue"}
    assert {s.background for s in scenes} == {"black"}
    fixed = tw.sample_scenes(1, 3, shapes=("circle",), positions=("center",), sizes=("medium",), jitter=False)
    assert all(s == tw.make_scene("circle", s.colour, background=s.background) for s in fixed)
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        tw.sample_scenes(1, 2, shapes=("hexagon",))
    with pytest.raises(ValueError, match="unknown style"):
        tw.make_scene("circle", "red", style="dotted")


# --- captions ---------------------------------------------------------------------------------------------


def test_canonical_captions():
    assert tw.caption(tw.make_scene("square", "blue", "small", "top left", "black")) == (
        "a small blue square in the top left on a black background"
    )
    assert tw.caption(tw.make_scene("circle", "red", "small", "top left"), "tags") == (
        "red circle, white background, small, top left"
    )
    assert tw.caption(tw.make_scene("circle", "orange", "medium", "left", "grey")) == (
        "a medium-sized orange circle on the left against a grey background"
    )
    subject = tw.make_scene(tw.SUBJECT_SHAPE, "red")
    assert tw.caption(subject) == "a medium-sized red ohwx shape in the center on a white background"
    assert tw.caption(subject, "tags") == "ohwx, red shape, white background, medium, center"
    styled = tw.make_scene("circle", "green", background="beige", style=tw.STYLE_NAME)
    assert tw.caption(styled).endswith("on a beige background, in ygk style")
    assert tw.caption(styled, "tags").startswith("ygk style, green circle, ")


def test_captions_name_what_is_drawn():
    rng = random.Random(0)
    for scene, _ in tw.judge_set(3, 150):
        for kind in tw.CAPTION_KINDS:
            text = tw.caption(scene, kind, rng)
            assert scene.colour in text and f"{scene.background} background" in text, text
            assert (tw.SUBJECT_TOKEN in text) == scene.has_subject, text
            assert (tw.STYLE_PHRASE in text) == scene.has_style, text
            if scene.has_subject:
                assert "shape" in text and not any(k in text for k in tw.KNOWN_SHAPES), text
            else:
                assert scene.shape in text, text
            if kind == "tags" and scene.has_subject:
                assert text.startswith(tw.SUBJECT_TOKEN + ", ")  # first tag, as keep_tokens expects


def test_captions_vary_with_the_rng_but_not_without():
    scene = tw.make_scene("cross", "purple", "large", "bottom right", "grey")
    assert len({tw.caption(scene) for _ in range(5)}) == 1
    rng = random.Random(0)
    assert len({tw.caption(scene, "sentence", rng) for _ in range(40)}) > 4
    assert len({tw.caption(scene, "tags", rng) for _ in range(40)}) > 4


# --- the trainer reads it ---------------------------------------------------------------------------------


def test_written_dataset_is_read_by_the_trainers_scanner(tmp_path: Path):
    scenes = tw.subject_set(0)
    root = tw.write_dataset(tmp_path / "subject", scenes, "sentence", repeats=10, name="ohwx shape", seed=0)
    assert root == tmp_path / "subject"
    scan = scan_dataset(root, trigger_word=tw.SUBJECT_TOKEN)
    assert scan.num_images == 8 and scan.num_train_images == 80 and scan.warnings == []
    assert scan.caption_coverage() == 1.0
    for item in scan.items:
        assert item.class_tokens == "ohwx shape" and (item.width, item.height) == (64, 64)
        assert item.caption is not None and tw.SUBJECT_TOKEN in item.caption
    rng = random.Random(0)
    assert sorted(i.caption for i in scan.items) == sorted(tw.caption(s, "sentence", rng) for s in scenes)

    base = tw.write_dataset(tmp_path / "base", tw.base_pretraining_set(0, 12), "tags", 1, "toy", seed=0)
    scan = scan_dataset(base)
    assert scan.num_images == 12 and all(i.caption_source == "file" for i in scan.items)
    assert (
        "white background" in scan.tag_frequency()["1_toy"]
        or "black background" in scan.tag_frequency()["1_toy"]
    )
