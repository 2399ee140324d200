"""What the quality tests measure, the jobs they train and the thresholds they hold.

`make_quality_table.py` prints the same numbers for docs/quality.md, so the table and the tests cannot
disagree about what "the subject was learnt" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib_trainer.models.loader import BaseModel

from . import harness as h
from . import toyworld as tw
from .judge import Judge

# Thresholds: measured values minus a margin for CPU-to-CPU noise (docs/quality.md has the measurements).
BASE_MIN_SHAPE = 0.8
BASE_MIN_COLOUR = 0.9
SUBJECT_MIN = 0.6
"""'Most samples with the trigger' show the subject."""
SUBJECT_MIN_COLOUR = 0.9
TRIGGER_MIN_MARGIN = 0.25
"""How much more often the subject appears with its trigger than in prompts for the other shapes."""
LEAK_MAX = 0.15
"""At most this share of pictures shows a held-out concept that the prompt did not ask for."""
DRIFT_MAX = 0.15
"""How much the share of correctly drawn known shapes may drop under a subject LoRA."""
PRIOR_MIN_GAIN = 0.25
"""How much prior preservation must improve each drift measure over the plain LoRA (known shapes drawn right,
the subject leaking into them, the subject on the bare class prompt), as a share of pictures, unless that
measure is within its margin (DRIFT_MAX, LEAK_MAX) anyway."""
STYLE_MIN = 0.5
STYLE_MIN_SHAPE = 0.6
STYLE_MIN_COLOUR = SUBJECT_MIN_COLOUR
"""The stripes are a dark shade of the prompted colour: a style that repaints the shape in other colours has
replaced the picture, not transferred a texture (a recipe measured 84 % striped with 31 % of the colours
right, docs/quality.md)."""

SUBJECT_DATA_SEED, STYLE_DATA_SEED, CLASS_DATA_SEED = 11, 12, 77
CLASS_PICTURES = 100
"""The trainer's default dreambooth.num_class_images."""
CLASS_GENERIC_PROB = 0.3
"""Share of class captions that call the shape just "shape", so the class prompt is regularised too."""
DATASET_SIZE = 8
STYLE_REPEATS = 7
"""12 style pictures x 7 repeats x 10 epochs = 840 steps, about the subject's 800."""
KNOWN_SEEDS = (101, 102)
TRIGGER_SEEDS = (201, 202, 203, 204)
CLASS_PROMPT = f"a {tw.SUBJECT_CLASS}"
STYLE_UNSEEN_SHAPES = tuple(s for s in tw.KNOWN_SHAPES if s not in tw.STYLE_TRAIN_SHAPES)


@dataclass
class Scores:
    """Shares of judged pictures. known_*: prompts for the known shapes; trigger_*: 'a red ohwx shape';
    class_subject: the bare class prompt 'a red shape' drawing the subject anyway (language drift)."""

    known_shape: float = 0.0
    known_colour: float = 0.0
    known_correct: float = 0.0
    known_subject: float = 0.0
    trigger_subject: float = 0.0
    trigger_colour: float = 0.0
    class_subject: float = 0.0
    style_striped: float = 0.0


@dataclass
class StyleScores:
    unseen_striped: float
    """'a blue triangle ..., in ygk style' on shapes the style LoRA never saw striped: striped pictures."""
    unseen_shape: float
    """... and the prompted shape is still the one drawn."""
    unseen_colour: float
    """... and in the prompted colour."""
    plain_striped: float
    """The same prompts without the trigger: striped anyway (leak)."""


def score_model(
    model: BaseModel | h.Draw, judge: Judge, *, subject_only: bool = False, with_style: bool = False
) -> Scores:
    s = Scores()
    trigger_probes = h.subject_probes(True)
    trigger = h.judged(model, judge, trigger_probes, TRIGGER_SEEDS)
    s.trigger_subject = h.rate(trigger, lambda i, v: v.subject)
    s.trigger_colour = h.rate(trigger, lambda i, v: v.colour == trigger_probes[i].colour)
    if subject_only:
        return s
    probes = h.base_probes()
    known = h.judged(model, judge, probes, KNOWN_SEEDS)
    s.known_shape = h.rate(known, lambda i, v: v.shape == probes[i].shape)
    s.known_colour = h.rate(known, lambda i, v: v.colour == probes[i].colour)
    s.known_correct = h.rate(known, lambda i, v: probes[i].correct(v))
    s.known_subject = h.rate(known, lambda i, v: v.subject)
    s.class_subject = h.rate(
        h.judged(model, judge, h.subject_probes(False), TRIGGER_SEEDS), lambda i, v: v.subject
    )
    if with_style:
        styled = h.judged(model, judge, h.style_probes(True, tw.KNOWN_SHAPES), KNOWN_SEEDS)
        s.style_striped = h.rate(styled, lambda i, v: v.striped)
    return s


def score_style(model: BaseModel, judge: Judge) -> StyleScores:
    styled_probes = h.style_probes(True, STYLE_UNSEEN_SHAPES)
    styled = h.judged(model, judge, styled_probes, TRIGGER_SEEDS)
    plain = h.judged(model, judge, h.style_probes(False, STYLE_UNSEEN_SHAPES), TRIGGER_SEEDS)
    return StyleScores(
        unseen_striped=h.rate(styled, lambda i, v: v.striped),
        unseen_shape=h.rate(styled, lambda i, v: v.shape == styled_probes[i].shape),
        unseen_colour=h.rate(styled, lambda i, v: v.colour == styled_probes[i].colour),
        plain_striped=h.rate(plain, lambda i, v: v.striped),
    )


SUBJECT_EPOCHS = 30
"""8 subject pictures x 10 repeats x 30 epochs = 2400 steps, within the 1500-3000 steps users give a real SD
1.5 LoRA. The quality tests train the subject with the default preset (`DEFAULT_PRESET`) for this long."""

DEFAULT_PRESET = h.tab_default_preset()
"""The issue's "default preset": the one a fresh Train tab applies to an SD1.5 model (rank 16 / alpha 8, AdamW
1e-4 with the text encoder at 5e-5, min-SNR 5, cosine), read from its file, with its GPU sizing replaced by
the toy world's 64 px CPU settings (`harness.tab_default_preset`). Until 2026-11-23 the tests trained with the
job spec's defaults instead (UNet only, no min-SNR): their subject bound 75 % on the model committed then, 41-56
% on four other models and 22 % on the half-wide one; this preset binds it 91 %, 69 % on the model committed
now and 59 % on the half-wide one (docs/quality.md, "The default preset", "Another model with the default
preset")."""

STYLE_TRAINING = {"optimizer": "Prodigy", "learning_rate": 1.0}
"""What the style test changes in the job spec's defaults (not the tab's preset, which the subject jobs take):
Prodigy sets its own step size and learns the stripes in 840 steps; the style has not been measured with AdamW
1e-4 at the subject's 2400 steps."""

LEARNT_TRIGGER_PRIOR = {
    "dataset": {"trigger_word": tw.SUBJECT_TOKEN},
    "dreambooth": {"prior": "trigger-off"},
    "network": {"learn_trigger": True},
}
"""The prior-preservation recipe that binds the trigger on the toy world (docs/quality.md, "The trainer's
learnt trigger word"): each caption is also trained without the trigger towards the base model
(`dreambooth.prior` "trigger-off"), and the trigger word gets a learnt embedding (`network.learn_trigger`).
Neither binds it alone. Everything else is the default preset, as for the plain subject LoRA."""

WITH_CLASS_FOLDER = {"dreambooth": {"prior": "trigger-off+class-images"}}
"""LEARNT_TRIGGER_PRIOR plus a batch of the captioned class folder (`class_folder`: the known shapes) in every
step. `trigger-off` alone holds only the captions of the subject's own pictures minus the trigger; the other
shapes' words drifted under it, 16-19 points on the committed model and 14 on the one committed until
2026-11-24 (margin 15). With the class folder: 6 and 12, with training seed 7 5 and 16 (docs/quality.md, "The
prior job with a class folder")."""

PLAIN_SUBJECT = DEFAULT_PRESET
"""The quality tests' plain subject LoRA: the default preset as it is."""
PRIOR_SUBJECT = h.merge_sections(DEFAULT_PRESET, LEARNT_TRIGGER_PRIOR, WITH_CLASS_FOLDER)
"""The quality tests' prior-preservation job: the same preset, data and steps with LEARNT_TRIGGER_PRIOR and
the class folder (`prior_job`)."""


def class_folder(root: Path, count: int = CLASS_PICTURES) -> Path:
    """Captioned pictures of the class, for prior preservation: the known shapes in every colour, size,
    place and background, captioned like the training pictures (sometimes just "shape"), as a user brings a
    folder of regularisation pictures with caption files. Returns the folder for dreambooth.class_data."""
    folder = tw.write_dataset(
        root / "class",
        tw.sample_scenes(CLASS_DATA_SEED, count, shapes=tw.KNOWN_SHAPES),
        "mixed",
        name=tw.SUBJECT_CLASS,
        seed=CLASS_DATA_SEED,
        generic_prob=CLASS_GENERIC_PROB,
    )
    return folder / f"1_{tw.SUBJECT_CLASS}"


def subject_job(
    root: Path,
    name: str,
    mode: str = "lora",
    *,
    class_pictures: bool = False,
    epochs: int = SUBJECT_EPOCHS,
    **sections: dict,
) -> dict:
    """~8 pictures of the held-out subject with user-style captions, 10 repeats, `epochs` epochs of 80 steps.

    mode "dreambooth-lora" adds prior preservation with the class prompt "a shape": class pictures the
    base model draws for it, or with `class_pictures` the captioned folder of `class_folder`."""
    data = tw.write_dataset(
        root / "data",
        tw.subject_set(SUBJECT_DATA_SEED, DATASET_SIZE),
        "mixed",
        repeats=h.SUBJECT_REPEATS,
        name=f"{tw.SUBJECT_TOKEN} {tw.SUBJECT_CLASS}",
        seed=SUBJECT_DATA_SEED,
    )
    if mode == "dreambooth-lora":
        prior: dict = {"class_prompt": CLASS_PROMPT}
        if class_pictures:
            prior["class_data"] = str(class_folder(root))
        sections = {**sections, "dreambooth": {**prior, **sections.get("dreambooth", {})}}
    training = {"epochs": epochs, **sections.get("training", {})}
    return h.toy_spec(data, root / "Lora", name, mode, **{**sections, "training": training})


def style_job(root: Path, name: str, **sections: dict) -> dict:
    """12 striped circles and squares, each shape in every colour, captioned '..., in ygk style'."""
    data = tw.write_dataset(
        root / "data",
        tw.style_set(STYLE_DATA_SEED),
        "mixed",
        repeats=STYLE_REPEATS,
        name=tw.STYLE_PHRASE,
        seed=STYLE_DATA_SEED,
    )
    return h.toy_spec(data, root / "Lora", name, **sections)


def prior_job(root: Path, name: str, *, epochs: int = SUBJECT_EPOCHS) -> dict:
    """The quality tests' prior-preservation job: `subject_job` with PRIOR_SUBJECT and the class folder."""
    return subject_job(root, name, "dreambooth-lora", class_pictures=True, epochs=epochs, **PRIOR_SUBJECT)
