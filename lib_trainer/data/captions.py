"""Turn an image's stored caption into the text trained on this step (kohya's per-sample processing).

Done per sample and per step, because dropout and shuffling must differ between epochs; all randomness
comes from the `rng` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

import random


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empties dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def build_caption(
    item_caption: str | None,
    *,
    class_tokens: str,
    trigger_word: str,
    prepend_trigger: bool,
    shuffle: bool,
    keep_tokens: int,
    dropout_rate: float,
    rng: random.Random,
) -> str:
    """The caption for one training sample.

    Order: fallback for a missing caption (folder class tokens, else the trigger word) -> trigger word put
    first -> caption dropout (whole caption becomes "", teaching the unconditional case) -> shuffle of the
    tags after the first `keep_tokens`. A trigger placed first by `prepend_trigger` is always kept in front,
    so it counts as (at least) the first kept tag.
    """
    trigger = trigger_word.strip()
    caption = item_caption.strip() if item_caption else ""
    if not caption:
        caption = (class_tokens or trigger).strip()

    keep = max(0, int(keep_tokens))
    if prepend_trigger and trigger:
        caption = _put_trigger_first(caption, trigger)
        keep = max(keep, 1)

    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""

    if not shuffle:
        return caption
    tags = split_tags(caption)
    if len(tags) - keep < 2:
        return ", ".join(tags)
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def _put_trigger_first(caption: str, trigger: str) -> str:
    """Make the trigger the first tag without duplicating it.

    A first tag that already is the trigger or starts with it as a word ('sks dog' from folder '10_sks dog')
    is left alone; a trigger found further back is moved to the front rather than repeated.
    """
    tags = split_tags(caption)
    if not tags:
        return trigger
    lowered = trigger.lower()
    first = tags[0].lower()
    if first == lowered or first.startswith(lowered + " "):
        return caption
    rest = [tag for tag in tags if tag.lower() != lowered]
    return ", ".join([trigger, *rest])
