"""The caption-effect diagnostic on the committed toy base model (docs/quality.md quotes its numbers)."""

from __future__ import annotations

import pytest

from . import harness as h
from . import toyworld as tw
from .caption_effect import caption_effect

pytestmark = [pytest.mark.quality, pytest.mark.slow]


@pytest.fixture(scope="module")
def base():
    return h.load_toy_base()


def test_base_model_reads_the_shape_word_except_at_the_noisiest_timesteps(base):
    """At t=350 the wrong shape word makes denoising circles much worse; at t=950 nothing is left to read."""
    circles = tw.sample_scenes(5, 8, shapes=("circle",), styles=("plain",))
    effect = caption_effect(base, circles, {"square": ("circle", "square")}, timesteps=(350, 950), draws=2)
    mid, noisiest = effect.relative["square"]
    assert mid >= 0.2, effect
    assert abs(noisiest) <= 0.1, effect


def test_a_swap_that_changes_no_caption_is_refused(base):
    circles = tw.sample_scenes(5, 2, shapes=("circle",), styles=("plain",))
    with pytest.raises(ValueError, match="'heart' is in none of the captions"):
        caption_effect(base, circles, {"x": ("heart", "square")}, timesteps=(350,), draws=1)
