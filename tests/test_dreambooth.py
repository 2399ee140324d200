"""DreamBooth-LoRA with prior preservation on a tiny SD1 model (CPU): the loss arithmetic on a fixed batch,
generated class images (made once, reused by the next job), a user's class folder, and the LoRA-off,
trigger-off and trigger-off+class-images priors."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import base_spec
from safetensors.torch import load_file

from lib_trainer.spec import spec_from_dict
from lib_trainer.train.job import (
    CLASS_IMAGE_CACHE,
    add_networks,
    cache_latents,
    prepare_data,
    run_job,
    setup_models,
    setup_prior,
)
from lib_trainer.train.preflight import preflight
from lib_trainer.train.prior import TRIGGER_OFF, ClassImagePrior, caption_without_trigger, class_images_of
from lib_trainer.train.runner import EXIT_CANCELLED, EXIT_OK, TrainContext
from lib_trainer.train.step_loss import compute_loss, half_loss, instance_captions


class _Events:
    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def emit(self, kind, **fields):
        self.seen.append((kind, fields))


def _spec(tiny_models, tiny_dataset, out: Path, **dreambooth) -> dict:
    spec = base_spec(
        tiny_models["sd1"],
        tiny_dataset,
        out,
        name="dog",
        training={"epochs": 1, "max_steps": 2, "batch_size": 2},
    )
    spec["mode"] = "dreambooth-lora"
    spec["dreambooth"] = {
        "class_prompt": "a photo of a dog",
        "num_class_images": 3,
        "class_steps": 2,
        "prior_loss_weight": 0.7,
        **dreambooth,
    }
    return spec


def _context(spec_dict: dict, job_dir: Path) -> TrainContext:
    spec = spec_from_dict(spec_dict)
    ctx = TrainContext(spec=spec, resolved=preflight(spec), job_dir=job_dir, events=_Events())
    ctx.noise_generator.manual_seed(1)
    ctx.caption_rng = random.Random(1)
    prepare_data(ctx)
    setup_models(ctx)
    cache_latents(ctx)
    setup_prior(ctx)
    add_networks(ctx)
    return ctx


def _events(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]


def test_prior_loss_is_the_class_half_weighted(tmp_path, tiny_models, tiny_dataset):
    ctx = _context(_spec(tiny_models, tiny_dataset, tmp_path / "out"), tmp_path / "jobs" / "a")
    entries = ctx.data.batches(0)[0]
    noise_state, caption_state = ctx.noise_generator.get_state(), ctx.caption_rng.getstate()
    prior_state = copy.deepcopy((ctx.prior._queue, ctx.prior._round))
    with torch.no_grad():
        total = compute_loss(ctx, entries)
        # the same batch again, half by half, with the same random numbers
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        ctx.prior._queue, ctx.prior._round = prior_state
        instance = half_loss(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e))
        class_entries = ctx.prior.next_batch()
        class_loss = half_loss(ctx, ctx.prior.data, ctx.prior.latents, class_entries, ctx.prior.captions)
    assert ctx.prior.weight == 0.7 and class_loss > 0 and instance > 0
    assert torch.allclose(total, instance + 0.7 * class_loss, rtol=0, atol=1e-6), (
        total,
        instance,
        class_loss,
    )
    assert ctx.prior.captions(class_entries) == ["a photo of a dog"] * len(class_entries)


@pytest.mark.parametrize("same_shape", [True, False], ids=["one-bucket", "two-buckets"])
def test_class_batch_shares_the_instance_forward_pass_when_their_latents_have_one_shape(
    tmp_path, tiny_models, tiny_dataset, same_shape
):
    """A class batch whose latents have the instance batch's shape goes through the UNet in the instance
    batch's pass (one pass of twice the batch); one of another bucket gets a pass of its own. The loss is
    the halves' loss either way, up to float rounding."""
    from PIL import Image

    folder = tmp_path / "class"
    folder.mkdir()
    size = (128, 128) if same_shape else (256, 64)  # the instance pictures all land in the 128x128 bucket
    for i in range(2):
        Image.new("RGB", size, (40 * i, 90, 200)).save(folder / f"c{i}.png")
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out", class_data=str(folder))
    spec["training"]["resolution"] = 128
    spec["dataset"]["max_bucket_reso"] = 256
    ctx = _context(spec, tmp_path / "jobs" / "a")
    prior = ctx.prior
    entries = ctx.data.batches(0)[0]
    class_batch = prior.next_batch()
    shapes = {ctx.latents.get(ctx.data.entries[entries[0]], False).shape}
    shapes.add(prior.latents.get(prior.data.entries[class_batch[0]], False).shape)
    assert len(shapes) == (1 if same_shape else 2), shapes
    prior._queue = [list(class_batch)]
    noise_state, caption_state = ctx.noise_generator.get_state(), ctx.caption_rng.getstate()
    passes: list[int] = []
    hook = ctx.base.unet.register_forward_pre_hook(lambda module, args: passes.append(len(args[0])))
    with torch.no_grad():
        for name, param in ctx.base.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
        try:
            total = compute_loss(ctx, entries)
        finally:
            hook.remove()
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        instance = half_loss(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e))
        class_loss = half_loss(ctx, prior.data, prior.latents, class_batch, prior.captions)
    sizes = [len(entries) + len(class_batch)] if same_shape else [len(entries), len(class_batch)]
    assert passes == sizes
    assert class_loss > 1e-6
    assert torch.allclose(total, instance + 0.7 * class_loss, rtol=1e-5, atol=0), (
        total,
        instance,
        class_loss,
    )


def test_lora_off_prior_is_zero_before_training_and_uses_no_class_images(tmp_path, tiny_models, tiny_dataset):
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out", prior="lora-off", num_class_images=0)
    ctx = _context(spec, tmp_path / "jobs" / "a")
    entries = ctx.data.batches(0)[0]
    with torch.no_grad():
        # LoRA B starts at zero: with the LoRA on or off the model predicts the same, so the prior loss is 0.
        prior = half_loss(
            ctx,
            ctx.data,
            ctx.latents,
            entries,
            lambda e: ["a photo of a dog"] * len(e),
            base_model_target=True,
        )
        assert prior.item() == 0.0
        for name, param in ctx.base.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
        prior = half_loss(
            ctx,
            ctx.data,
            ctx.latents,
            entries,
            lambda e: ["a photo of a dog"] * len(e),
            base_model_target=True,
        )
    assert prior.item() > 0
    assert not (tmp_path / "jobs" / CLASS_IMAGE_CACHE).exists()


def test_generated_class_images_are_made_once_and_reused(tmp_path, tiny_models, tiny_dataset):
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out")
    first, second = tmp_path / "jobs" / "first", tmp_path / "jobs" / "second"
    assert run_job(spec_from_dict(spec), first) == 0, _events(first)[-1]
    made = [e for e in _events(first) if e["type"] == "class_images"]
    assert len(made) == 1 and (made[0]["generated"], made[0]["reused"], made[0]["total"]) == (3, 0, 3)
    assert (tmp_path / "out" / "dog.safetensors").is_file()
    spec["dreambooth"]["num_class_images"] = 4
    spec["name"] = "dog2"
    assert run_job(spec_from_dict(spec), second) == 0, _events(second)[-1]
    again = [e for e in _events(second) if e["type"] == "class_images"]
    assert (again[0]["generated"], again[0]["reused"]) == (1, 3)
    assert (
        again[0]["folder"] == made[0]["folder"] and Path(made[0]["folder"]).parent.name == CLASS_IMAGE_CACHE
    )


def test_users_class_folder_and_instance_prompt(tmp_path, tiny_models, tiny_dataset):
    from lib_trainer.demo import make_dataset

    folder = make_dataset(tmp_path / "dogs", count=3)
    spec = _spec(
        tiny_models, tiny_dataset, tmp_path / "out", class_data=str(folder), instance_prompt="sks dog"
    )
    job = tmp_path / "jobs" / "a"
    ctx = _context(spec, job)
    assert ctx.prior.latents is not None and len(ctx.prior.data.samples) == 3
    assert instance_captions(ctx, [0, 1]) == ["sks dog", "sks dog"]
    used = [f for kind, f in ctx.events.seen if kind == "class_images"]
    assert used and used[0]["source"] == "folder" and used[0]["generated"] == 0
    assert not (tmp_path / "jobs" / CLASS_IMAGE_CACHE).exists()
    assert run_job(spec_from_dict(spec), tmp_path / "jobs" / "b") == 0


def test_plain_lora_mode_has_no_prior(tmp_path, tiny_models, tiny_dataset):
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out")
    spec["mode"] = "lora"
    spec["dreambooth"]["instance_prompt"] = "sks dog"
    ctx = _context(spec, tmp_path / "jobs" / "a")
    assert ctx.prior is None
    assert "sks dog" not in instance_captions(ctx, [0])  # the captions, not the DreamBooth instance prompt
    assert not (tmp_path / "jobs" / CLASS_IMAGE_CACHE).exists()


def test_a_missing_class_folder_fails_before_loading_anything(tmp_path, tiny_models, tiny_dataset):
    from lib_trainer.train.preflight import PreflightError

    spec = spec_from_dict(
        _spec(tiny_models, tiny_dataset, tmp_path / "out", class_data=str(tmp_path / "nope"))
    )
    try:
        preflight(spec)
    except PreflightError as exc:
        assert exc.field == "dreambooth.class_data" and "leave it empty" in str(exc)
    else:
        raise AssertionError("no error for a missing class folder")
    code = run_job(spec, tmp_path / "job")
    assert code == 2 and _events(tmp_path / "job")[-1]["field"] == "dreambooth.class_data"


def test_kohya_regularization_folders_keep_their_repeats_and_pair_one_class_batch_per_step(
    tmp_path, tiny_models, tiny_dataset
):
    """kohya's reg layout: `N_class` subfolders whose N repeats an image; every instance batch is paired
    with one class batch, so per epoch the class is seen as often as the subject (kohya balances the reg
    images to the number of training images the same way)."""
    from collections import Counter

    from lib_trainer.demo import make_dataset

    reg = tmp_path / "reg"
    make_dataset(reg, count=3, trigger="dog")  # reg/2_dog shape: 3 images, 2 repeats each
    make_dataset(tmp_path / "tmp", count=1, seed=5, trigger="cat")
    (tmp_path / "tmp" / "2_cat shape").rename(reg / "1_cat")  # 1 image, 1 repeat
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out", class_data=str(reg))
    ctx = _context(spec, tmp_path / "jobs" / "a")
    prior = ctx.prior
    assert len(prior.data.samples) == 4 and len(prior.data.entries) == 3 * 2 + 1
    seen = Counter()
    round_size = len(prior.data.batches(0))
    for _ in range(round_size):  # one full pass over the class entries
        for entry in prior.next_batch():
            seen[Path(prior.data.samples[prior.data.entries[entry]].item.path).parent.name] += 1
    assert seen == {"2_dog shape": 6, "1_cat": 1}
    # during training: exactly one class batch per instance batch (the loss adds both halves)
    ctx2 = _context(spec, tmp_path / "jobs" / "b")
    drawn = []
    original = ctx2.prior.next_batch
    ctx2.prior.next_batch = lambda: drawn.append(1) or original()
    with torch.no_grad():
        for batch in ctx2.data.batches(0)[:3]:
            compute_loss(ctx2, batch)
    assert len(drawn) == 3


def test_caption_without_trigger_takes_out_whole_words_only():
    assert caption_without_trigger("a red ohwx shape on a white background", "ohwx") == (
        "a red shape on a white background"
    )
    assert caption_without_trigger("ohwx, red shape, OHWX, large", "ohwx") == "red shape, large"
    assert caption_without_trigger("ohwxy shape, ohwx_2", "ohwx") == "ohwxy shape, ohwx_2"  # not a whole word
    assert caption_without_trigger("a photo of sks dog", "sks dog") == "a photo of"
    assert caption_without_trigger("no trigger here,tags", "ohwx") == "no trigger here,tags"  # unchanged
    assert caption_without_trigger("a (b) c", "(b)") == "a c"  # regex characters are literal


def test_trigger_off_prior_pairs_each_picture_with_its_caption_minus_the_trigger(
    tmp_path, tiny_models, tiny_dataset
):
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out", prior="trigger-off", class_prompt="")
    spec["dataset"]["trigger_word"] = "sks"
    spec["dataset"]["prepend_trigger_word"] = True
    ctx = _context(spec, tmp_path / "jobs" / "a")
    assert ctx.prior.kind == TRIGGER_OFF and ctx.prior.weight == 0.7
    entries = ctx.data.batches(0)[0]
    seen: list[list[str]] = []
    pair_captions = ctx.prior.captions
    ctx.prior.captions = lambda captions: seen.append(captions) or pair_captions(captions)
    noise_state, caption_state = ctx.noise_generator.get_state(), ctx.caption_rng.getstate()
    with torch.no_grad():
        # LoRA B starts at zero: the LoRA changes nothing yet, so the pair adds nothing to the instance loss
        total = compute_loss(ctx, entries)
        after_pair = ctx.noise_generator.get_state()
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        instance = half_loss(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e))
        # the pair reuses the instance half's noise and timesteps: no further random numbers were drawn
        assert torch.equal(ctx.noise_generator.get_state(), after_pair)
        # equal up to float rounding: the pair runs the UNet on twice the batch, whose CPU kernels may round
        # differently (1 ulp on an AMD EPYC without AVX-512); a pair that added loss would add a share of it
        assert torch.allclose(total, instance, rtol=1e-6, atol=0), (total, instance)
        for name, param in ctx.base.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        changed = compute_loss(ctx, entries)
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        instance = half_loss(ctx, ctx.data, ctx.latents, entries, lambda e: instance_captions(ctx, e))
    assert changed > instance + 1e-6  # the LoRA now moves the trigger-less captions away from the base model
    [first, *_] = seen
    assert len(first) == len(entries) and all(c.startswith("sks") for c in first)
    assert [caption_without_trigger(c, "sks") for c in first] == pair_captions(first)
    assert not any("sks" in c for c in pair_captions(first))
    assert not (tmp_path / "jobs" / CLASS_IMAGE_CACHE).exists()


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_trigger_off_pair_in_one_batch_equals_two_passes(tmp_path, tiny_models, tiny_dataset, arch):
    """The pair goes through the LoRA in the instance batch's forward pass (twice the batch); its loss must
    be exactly the one of a separate pass over the same noisy latents with the trigger-less captions towards
    the base model's prediction for them (SDXL: its size/crop ids repeated with the latents)."""
    spec = _spec(tiny_models, tiny_dataset, tmp_path / "out", prior="trigger-off", class_prompt="")
    spec["model"]["checkpoint"] = str(tiny_models[arch])
    spec["dataset"]["trigger_word"] = "sks"
    spec["dataset"]["prepend_trigger_word"] = True
    ctx = _context(spec, tmp_path / "jobs" / arch)
    entries = ctx.data.batches(0)[0]
    assert len(entries) == 2
    seen: list[list[str]] = []
    pair_captions = ctx.prior.captions
    ctx.prior.captions = lambda captions: seen.append(captions) or pair_captions(captions)
    noise_state, caption_state = ctx.noise_generator.get_state(), ctx.caption_rng.getstate()

    def replay(caption_fn, **kwargs) -> torch.Tensor:
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        return half_loss(ctx, ctx.data, ctx.latents, entries, caption_fn, **kwargs)

    with torch.no_grad():
        for name, param in ctx.base.unet.named_parameters():
            if "lora_B" in name:  # a LoRA that changes the picture, so the pair's loss is not zero
                param.add_(0.05)
        total = compute_loss(ctx, entries)
        instance = replay(lambda e: instance_captions(ctx, e))
        pair = replay(lambda e: pair_captions(seen[0]), base_model_target=True)
    assert pair > 1e-6
    assert torch.allclose(total, instance + 0.7 * pair, rtol=1e-5, atol=1e-7), (total, instance, pair)


def _trigger_off_with_class_images(tiny_models, tiny_dataset, out: Path, **dreambooth) -> dict:
    spec = _spec(tiny_models, tiny_dataset, out, prior="trigger-off+class-images", **dreambooth)
    spec["dataset"]["trigger_word"] = "sks"
    spec["dataset"]["prepend_trigger_word"] = True
    return spec


def test_trigger_off_with_class_images_adds_a_class_batch_to_the_pair(tmp_path, tiny_models, tiny_dataset):
    """ "trigger-off+class-images": the trigger-off pair's loss plus the weighted loss of the next class batch
    (from the user's class folder here, with its own captions); nothing is generated."""
    spec = _trigger_off_with_class_images(
        tiny_models, tiny_dataset, tmp_path / "out", class_data=str(tiny_dataset)
    )
    ctx = _context(spec, tmp_path / "jobs" / "a")
    class_half = ctx.prior.class_half
    assert ctx.prior.kind == TRIGGER_OFF and isinstance(class_half, ClassImagePrior)
    assert class_images_of(ctx.prior) is class_half and class_half.weight == 0.7
    entries = ctx.data.batches(0)[0]
    noise_state, caption_state = ctx.noise_generator.get_state(), ctx.caption_rng.getstate()
    queue_state = copy.deepcopy((class_half._queue, class_half._round))
    with torch.no_grad():
        for name, param in ctx.base.unet.named_parameters():
            if "lora_B" in name:  # a LoRA that changes the picture, so neither prior half is zero
                param.add_(0.05)
        total = compute_loss(ctx, entries)
        ctx.noise_generator.set_state(noise_state)
        ctx.caption_rng.setstate(caption_state)
        class_half._queue, class_half._round = copy.deepcopy(queue_state)
        ctx.prior.class_half = None  # the same step with trigger-off alone ...
        pair_only = compute_loss(ctx, entries)
        class_batch = class_half.next_batch()  # ... then the class batch the step above took
        class_loss = half_loss(ctx, class_half.data, class_half.latents, class_batch, class_half.captions)
    assert class_loss > 1e-6
    assert torch.allclose(total, pair_only + 0.7 * class_loss, rtol=1e-6, atol=0), (
        total,
        pair_only,
        class_loss,
    )
    assert not (tmp_path / "jobs" / CLASS_IMAGE_CACHE).exists()


def test_trigger_off_with_class_images_resumes_with_the_same_class_batches(
    tmp_path, tiny_models, tiny_dataset
):
    """Generated class images (from the class prompt), and a job stopped after its first step and resumed
    ends with the LoRA of the job run straight through: the class batches continue where they were."""

    def spec(out: Path) -> dict:
        data = _trigger_off_with_class_images(tiny_models, tiny_dataset, out)
        data["output"] = {**data.get("output", {}), "save_every_epochs": 0, "save_lora_on_cancel": False}
        return data

    straight = tmp_path / "straight"
    assert run_job(spec_from_dict(spec(straight)), tmp_path / "jobs" / "s") == EXIT_OK
    events = _events(tmp_path / "jobs" / "s")
    assert [e["total"] for e in events if e["type"] == "class_images"] == [3]
    assert any("and a batch of class images every step" in e.get("message", "") for e in events)
    resumed, job = tmp_path / "resumed", tmp_path / "jobs" / "r"
    assert run_job(spec_from_dict(spec(resumed)), job, stop_at_step=1) == EXIT_CANCELLED
    assert (job / "state" / "extra-prior.pt").is_file()
    assert run_job(spec_from_dict(spec(resumed)), job, resume=True) == EXIT_OK
    a, b = load_file(str(straight / "dog.safetensors")), load_file(str(resumed / "dog.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
