"""Per-sample caption building: fallback, trigger word, dropout, shuffling with kept tokens."""

from __future__ import annotations

import random

from lib_trainer.data.captions import build_caption


def _build(caption, rng=None, **overrides):
    kwargs = dict(
        class_tokens="",
        trigger_word="",
        prepend_trigger=False,
        shuffle=False,
        keep_tokens=0,
        dropout_rate=0.0,
        rng=rng or random.Random(0),
    )
    kwargs.update(overrides)
    return build_caption(caption, **kwargs)


def test_caption_used_verbatim_when_nothing_is_enabled():
    assert _build("a photo, red hat") == "a photo, red hat"


def test_missing_caption_falls_back_to_class_tokens_then_trigger():
    assert _build(None, class_tokens="sks dog", trigger_word="zzz") == "sks dog"
    assert _build(None, class_tokens="", trigger_word="zzz") == "zzz"
    assert _build("   ", class_tokens="", trigger_word="zzz") == "zzz"
    assert _build(None) == ""


def test_trigger_prepended_once():
    assert _build("red hat, outdoors", trigger_word="sks", prepend_trigger=True) == "sks, red hat, outdoors"
    assert _build("sks, red hat", trigger_word="sks", prepend_trigger=True) == "sks, red hat"
    assert _build("SKS, red hat", trigger_word="sks", prepend_trigger=True) == "SKS, red hat"
    # folder class tokens that already start with the trigger are not doubled
    assert _build(None, class_tokens="sks dog", trigger_word="sks", prepend_trigger=True) == "sks dog"
    # a trigger further back is moved to the front, not repeated
    assert (
        _build("red hat, sks, outdoors", trigger_word="sks", prepend_trigger=True) == "sks, red hat, outdoors"
    )
    # not prepended when switched off
    assert _build("red hat", trigger_word="sks", prepend_trigger=False) == "red hat"


def test_dropout_empties_the_whole_caption_and_only_draws_when_enabled():
    assert _build("sks, red hat", trigger_word="sks", prepend_trigger=True, dropout_rate=1.0) == ""
    rng = random.Random(5)
    _build("a, b, c", rng=rng, dropout_rate=0.0)
    assert rng.random() == random.Random(5).random()  # no draw was consumed


def test_dropout_rate_is_respected_statistically():
    rng = random.Random(1)
    dropped = sum(_build("a, b", rng=rng, dropout_rate=0.25) == "" for _ in range(4000))
    assert 850 < dropped < 1150


def test_shuffle_keeps_first_tokens_and_the_prepended_trigger():
    caption = "t1, t2, t3, t4, t5, t6"
    rng = random.Random(3)
    seen_orders = set()
    for _ in range(50):
        out = _build(caption, rng=rng, trigger_word="sks", prepend_trigger=True, shuffle=True, keep_tokens=0)
        tags = out.split(", ")
        assert tags[0] == "sks"
        assert sorted(tags[1:]) == ["t1", "t2", "t3", "t4", "t5", "t6"]
        seen_orders.add(out)
    assert len(seen_orders) > 10

    for _ in range(50):
        out = _build(caption, rng=rng, shuffle=True, keep_tokens=2)
        assert out.startswith("t1, t2, ")
        assert sorted(out.split(", ")[2:]) == ["t3", "t4", "t5", "t6"]

    # with the trigger prepended, keep_tokens counts it: keep 2 = trigger + first tag
    for _ in range(50):
        out = _build(caption, rng=rng, trigger_word="sks", prepend_trigger=True, shuffle=True, keep_tokens=2)
        assert out.startswith("sks, t1, ")


def test_shuffle_normalises_separators():
    out = _build("a,b ,, c", rng=random.Random(0), shuffle=True, keep_tokens=3)
    assert out == "a, b, c"


def test_seeded_rng_is_deterministic():
    options = dict(trigger_word="sks", prepend_trigger=True, shuffle=True, keep_tokens=1, dropout_rate=0.3)
    caption = "a, b, c, d, e, f, g"
    rng = random.Random(42)
    first = [_build(caption, rng=rng, **options) for _ in range(30)]
    rng = random.Random(42)
    second = [_build(caption, rng=rng, **options) for _ in range(30)]
    assert first == second
    rng = random.Random(43)
    third = [_build(caption, rng=rng, **options) for _ in range(30)]
    assert third != first
