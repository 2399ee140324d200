"""The committed toy judge (issue 8): it reads held-out toy pictures back into their words, keeps doing so when
they are blurred the way generated ones are, never crashes on odd inputs, and says how to rebuild it."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image, ImageFilter

from . import toyworld as tw
from .judge import HEADS, JUDGE_FILE, Judge, JudgeNet, Verdict, accuracy, load_judge, metadata_accuracies

pytestmark = pytest.mark.quality

TEST_SEED = 2024
"""Not make_judge.py's training seed (0) nor its held-out seed (1): scenes neither of them has seen."""
N_SCENES = 300
CLEAN_FLOOR = {
    "shape": 0.97,
    "colour": 0.97,
    "style": 0.97,
    "background": 0.97,
    "subject": 0.97,
    "size": 0.93,
    "position": 0.93,
}
"""make_judge.py's targets (99% and 95%) less a margin for a 300-scene sample."""


@pytest.fixture(scope="module")
def judge() -> Judge:
    return load_judge()


@pytest.fixture(scope="module")
def held_out() -> list[tuple[tw.Scene, dict]]:
    return tw.judge_set(TEST_SEED, N_SCENES)


@pytest.fixture(scope="module")
def renders(held_out) -> list[Image.Image]:
    return [tw.render(scene) for scene, _ in held_out]


def test_committed_judge_reads_held_out_scenes(judge, held_out, renders):
    scores = accuracy(judge, held_out, renders)
    low = {name: round(scores[name], 3) for name, floor in CLEAN_FLOOR.items() if scores[name] < floor}
    assert not low, f"judge below its floor on clean held-out scenes: {low} (all: {scores})"


def test_an_untrained_judge_would_fail_the_floors(held_out, renders):
    """The floors mean something: a randomly initialised network meets none of them (guessing the majority
    gets 80% on "subject" and 60% on "style" at best)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = Judge(JudgeNet())
    scores = accuracy(untrained, held_out, renders)
    assert not [name for name, floor in CLEAN_FLOOR.items() if scores[name] >= floor], scores


@pytest.mark.parametrize(
    "soften",
    [
        pytest.param(lambda im: im.filter(ImageFilter.GaussianBlur(1.0)), id="blur-1px"),
        pytest.param(
            lambda im: im.resize((32, 32), Image.Resampling.BILINEAR).resize(
                (64, 64), Image.Resampling.BILINEAR
            ),
            id="through-32px",
        ),
    ],
)
def test_judge_is_robust_to_soft_images(judge, held_out, renders, soften):
    """Generated pictures come out of a VAE soft-edged; the judge must not need crisp ones."""
    scores = accuracy(judge, held_out, [soften(image) for image in renders])
    low = {name: round(scores[name], 3) for name in ("shape", "colour", "style") if scores[name] < 0.95}
    assert not low, f"judge below 95% on softened scenes: {low} (all: {scores})"


def test_judge_sees_faint_and_partial_stripes(judge, held_out):
    """Generated stripes are often fainter than the rendered ones or cover only part of the shape; a human
    still calls them striped, and so must the judge (it once read such pictures as plain with certainty).
    Fresh scenes and fading draws, not make_judge.py's; the floor is below the clean one because the
    faintest draws (dark bands 45 % as dark, a third of the shape) are hard to see at 64 px."""
    rng = random.Random(TEST_SEED)
    styled = [scene for scene, _ in held_out if scene.has_style]
    faded = [
        tw.render_faded(scene, rng.uniform(0.45, 1.0), rng.uniform(0, 360), rng.uniform(-0.3, 0.8))
        for scene in styled
    ]
    verdicts = judge.predict(faded)
    assert sum(v.striped for v in verdicts) >= 0.9 * len(styled), [round(v.style_p, 2) for v in verdicts]
    assert sum(v.shape == s.shape for v, s in zip(verdicts, styled, strict=True)) >= 0.95 * len(styled)


def test_odd_inputs_give_plausible_verdicts(judge):
    images = [
        Image.new("RGB", (64, 64), (128, 128, 128)),  # nothing drawn
        Image.new("RGBA", (256, 256), (255, 255, 255, 0)),  # other size and mode
        Image.new("L", (17, 40), 0),
        Image.effect_noise((64, 64), 80).convert("RGB"),
        Image.new("RGB", (64, 64), tw.COLOURS["red"]),  # a collapsed model's flat frame
    ]
    verdicts = judge.predict(images)
    assert len(verdicts) == len(images)
    for verdict in verdicts:
        assert isinstance(verdict, Verdict)
        for name, classes in HEADS.items():
            if name != "style":
                assert getattr(verdict, name) in classes
            assert 0.0 <= getattr(verdict, f"{name}_p") <= 1.0
        assert verdict.style in tw.STYLES
        assert isinstance(verdict.subject, bool) and isinstance(verdict.striped, bool)
    grey, red = verdicts[0], verdicts[-1]
    assert grey.background == "grey"
    for flat in (grey, red):
        assert flat.shape_p < 0.6, f"a flat picture should not look like a confident {flat.shape}: {flat}"
    assert judge.predict([]) == []


def test_missing_judge_says_how_to_rebuild_it(tmp_path):
    missing = tmp_path / "nowhere" / "toy-judge.safetensors"
    with pytest.raises(FileNotFoundError) as error:
        load_judge(missing)
    assert str(missing) in str(error.value)
    assert "make_judge.py" in str(error.value)


def test_committed_judge_records_how_it_was_made(judge):
    assert JUDGE_FILE.stat().st_size < 1_500_000
    assert "make_judge.py" in judge.metadata["command"]
    recorded = metadata_accuracies(judge)
    assert recorded["clean"]["shape"] >= 0.99 and recorded["augmented"]["shape"] >= 0.97, recorded
