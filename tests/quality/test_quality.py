"""Does training work? Judged numbers on the toy world (issue 8), on the CPU in a few minutes.

The toy base model (data/toy-sd1.safetensors) was pre-trained on the known shapes only; these tests train
LoRAs on held-out concepts with the default preset in trainer processes started as the WebUI starts them
(side by side, one per core: training_pool.py), load them back from the exported kohya files, draw through
the trainer's own sampling path and let the toy judge score the pictures. Thresholds sit below the numbers
measured when they were set (docs/quality.md) with room for run-to-run noise across CPUs, and far above what
a broken schedule, latent scale, target or caption path produces (those draw noise: the judge then finds the
prompted shape at chance level, ~25 %).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lib_trainer.spec import spec_from_dict

from . import harness as h
from . import scores
from . import toyworld as tw
from .judge import load_judge
from .kohya_merge import attach_trainer_state
from .report import RUN
from .training_pool import TrainingPool

pytestmark = [pytest.mark.quality, pytest.mark.slow]


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The module's three LoRA jobs, trained side by side in trainer processes (one per core, the longest
    first) while the tests judge whatever is ready; killed at the end if a test run stops early."""
    root = tmp_path_factory.mktemp("jobs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # judging shares the cores with the trainers: more threads would only wait
    pool = TrainingPool()
    # the prior job: the same subject, data, steps and default preset with prior preservation as the toy
    # world binds the trigger, `trigger-off` with a learnt trigger word, and a captioned class folder
    # (scores.PRIOR_SUBJECT)
    prior = scores.prior_job(root / "prior", "subject_prior")
    pool.submit("prior", prior, root / "prior" / "job")
    plain = scores.subject_job(root / "subject", "subject", "lora", **scores.PLAIN_SUBJECT)
    pool.submit("subject", plain, root / "subject" / "job")
    style = scores.style_job(root / "style", "style", training=scores.STYLE_TRAINING)
    pool.submit("style", style, root / "style" / "job")
    yield pool
    pool.close()
    torch.set_num_threads(threads)


def finished(training: TrainingPool, name: str) -> h.TrainedLora:
    """Wait for job `name`, note its training time for the report, and take the cores it freed."""
    lora = training.result(name)
    RUN.record_seconds(name, lora.train_seconds)
    take_free_cores(training)
    return lora


def take_free_cores(training: TrainingPool) -> None:
    """Judge on the cores no trainer holds (one while the jobs run, both once they are done): a judging thread
    that waits for a trainer's core slows both (500 s to judge the base model at two threads)."""
    torch.set_num_threads(training.free_cores())


def judged(name: str, values, keys: tuple[str, ...] | None = None):
    """`values` (a scores dataclass), kept for the run's report of judged numbers."""
    RUN.record(name, values, keys)
    return values


@pytest.fixture(scope="module")
def base_scores(training, judge) -> scores.Scores:
    """Asks for `training` only so that the jobs start before the base model is judged."""
    return judged("base model", scores.score_model(h.load_toy_base(), judge))


@pytest.fixture(scope="module")
def subject_lora(training) -> h.TrainedLora:
    return finished(training, "subject")


@pytest.fixture(scope="module")
def prior_scores(training, judge) -> scores.Scores:
    lora = finished(training, "prior")
    return judged("prior job", scores.score_model(h.with_lora(lora.final), judge))


@pytest.fixture(scope="module")
def subject_scores(subject_lora, judge) -> scores.Scores:
    return judged("plain subject LoRA", scores.score_model(h.with_lora(subject_lora.final), judge))


def test_base_model_draws_the_prompted_shape_and_colour(base_scores):
    """Guards the sampler, the noise schedule, the latent scale and the text path of the base model."""
    assert base_scores.known_shape >= scores.BASE_MIN_SHAPE, base_scores
    assert base_scores.known_colour >= scores.BASE_MIN_COLOUR, base_scores
    assert base_scores.trigger_subject <= 0.1, "the base model draws the held-out subject: it is not held out"
    assert base_scores.style_striped <= 0.1, "the base model draws the held-out style: it is not held out"


def test_subject_lora_learns_the_trigger(subject_scores):
    assert subject_scores.trigger_subject >= scores.SUBJECT_MIN, subject_scores
    assert subject_scores.trigger_colour >= scores.SUBJECT_MIN_COLOUR, subject_scores
    # the trigger, not just "any prompt after training", is what brings the subject
    assert subject_scores.trigger_subject - subject_scores.known_subject >= scores.TRIGGER_MIN_MARGIN


@pytest.mark.parametrize("scores_fixture", ["subject_scores", "prior_scores"], ids=["plain-lora", "prior"])
def test_subject_lora_keeps_other_shapes(scores_fixture, request, base_scores):
    """Language drift of the other shapes within the stated margins: drawn right at most DRIFT_MAX below the
    base model, and the subject in at most LEAK_MAX of their pictures, with or without prior preservation."""
    lora_scores: scores.Scores = request.getfixturevalue(scores_fixture)
    assert lora_scores.known_subject <= scores.LEAK_MAX, (
        "the subject shows up without its trigger",
        lora_scores,
    )
    drift = base_scores.known_correct - lora_scores.known_correct
    assert drift <= scores.DRIFT_MAX, (base_scores, lora_scores)


def test_class_prompt_keeps_its_meaning_with_prior_preservation(prior_scores):
    """The bare class prompt ('a red shape') draws the subject in at most LEAK_MAX of its pictures.

    Asked of the prior-preservation job only: a plain LoRA trained on 'a red ohwx shape' learns the class
    word with the trigger. That is the language drift DreamBooth's class-specific prior preservation was made
    for (Ruiz et al. 2022); the plain LoRA's drift is measured, and must fall, in the test below."""
    assert prior_scores.class_subject <= scores.LEAK_MAX, ("the class prompt draws the subject", prior_scores)


def test_prior_preservation_reduces_language_drift(prior_scores, subject_scores, base_scores):
    """Same pictures, steps and optimizer; the prior keeps the other shapes and the class word.

    Each drift measure must fall by PRIOR_MIN_GAIN against the plain LoRA, or be within the margin that
    test_subject_lora_keeps_other_shapes holds both LoRAs to: a fixed gain alone could never be met
    once the plain LoRA stops drifting, and the two tests would exclude each other."""

    def limit(plain_drift: float, margin: float) -> float:
        return max(margin, plain_drift - scores.PRIOR_MIN_GAIN)

    def shapes_drift(s: scores.Scores) -> float:
        return base_scores.known_correct - s.known_correct

    pair = (subject_scores, prior_scores)
    # the known shapes are drawn right far more often, and the subject leaks into them far less
    assert shapes_drift(prior_scores) <= limit(shapes_drift(subject_scores), scores.DRIFT_MAX), pair
    assert prior_scores.known_subject <= limit(subject_scores.known_subject, scores.LEAK_MAX), pair
    # the class prompt ("a red shape") is where a plain LoRA drifts most: it starts drawing the subject
    assert prior_scores.class_subject <= limit(subject_scores.class_subject, scores.LEAK_MAX), pair


def test_subject_is_still_learnt_with_prior_preservation(prior_scores):
    assert prior_scores.trigger_subject >= scores.SUBJECT_MIN, prior_scores
    assert prior_scores.trigger_subject - prior_scores.class_subject >= scores.TRIGGER_MIN_MARGIN


@pytest.fixture(scope="module")
def style_scores(training, judge) -> scores.StyleScores:
    lora = finished(training, "style")
    return judged("style LoRA", scores.score_style(h.with_lora(lora.final), judge))


def test_style_lora_transfers_to_shapes_it_never_saw(style_scores):
    """The issue's item: the texture on the triangle and the cross, which the style pictures never show,
    with the prompted shape and colour still drawn (a style adds stripes; it does not replace the picture)."""
    assert style_scores.unseen_shape >= scores.STYLE_MIN_SHAPE, ("the style replaced the shape", style_scores)
    assert style_scores.unseen_colour >= scores.STYLE_MIN_COLOUR, (
        "the style replaced the colour",
        style_scores,
    )
    assert style_scores.unseen_striped >= scores.STYLE_MIN, style_scores


_STYLE_LEAK_GAP = (
    "open (issue 8): the style comes as often without 'in ygk style' as with it (62 % / 62 %; 53 / 56 % on the "
    "previous model); "
    "with the empty prompt paired it is bound in the model's own prediction and guidance 7 multiplies the rest "
    "(docs/quality.md, 'The style's leak is made by the guidance scale'); strict, so the fix cannot go "
    "unnoticed"
)


@pytest.mark.xfail(strict=True, reason=_STYLE_LEAK_GAP)
def test_style_lora_stays_off_without_its_trigger(style_scores):
    """Our bar beyond the issue's: the trigger, not just any prompt after training, brings the style."""
    assert style_scores.plain_striped <= scores.LEAK_MAX, (
        "the style shows up without its trigger",
        style_scores,
    )
    assert style_scores.unseen_striped - style_scores.plain_striped >= scores.TRIGGER_MIN_MARGIN, style_scores


def test_exported_file_judges_like_the_trained_model(subject_lora, subject_scores, judge, tmp_path, training):
    """The fp16 kohya file, merged by the WebUI's formula (kohya_merge.py), draws what the in-memory LoRA drew."""
    take_free_cores(training)
    base = h.load_toy_base()
    state = load_file(str(subject_lora.job_dir / "state" / "lora.safetensors"))
    network = spec_from_dict(scores.subject_job(tmp_path, "x", "lora", **scores.PLAIN_SUBJECT)).network
    rank, alpha = network.rank, network.alpha
    attach_trainer_state(base, state, rank, alpha)
    with torch.no_grad():
        in_memory = scores.score_model(base, judge, subject_only=True)
    judged("plain subject, in-memory", in_memory, ("trigger_subject", "trigger_colour"))
    assert abs(in_memory.trigger_subject - subject_scores.trigger_subject) <= 0.1, (in_memory, subject_scores)
    assert abs(in_memory.trigger_colour - subject_scores.trigger_colour) <= 0.1


def test_judge_sees_the_held_out_concepts_in_the_training_pictures(judge):
    """The tests above are only as good as the judge on exactly these concepts."""
    subject = judge.predict([tw.render(s) for s in tw.subject_set(5, 16)])
    style = judge.predict([tw.render(s) for s in tw.style_set(5, per_colour=2)])
    assert sum(v.subject for v in subject) >= 15
    assert sum(v.striped for v in style) >= len(style) - 1
