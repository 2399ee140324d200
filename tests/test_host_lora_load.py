"""A LoRA made by our trainer, loaded by a real AUTOMATIC1111 WebUI (v1.10.x) through its HTTP API.

Unit tests check our key names and metadata against what we *believe* A1111 expects; this module asks the
host itself. It trains a LoRA on a full-size random SD1 checkpoint, starts the WebUI offline on CPU with
only that checkpoint and that LoRA in its model folders, and checks that the host lists the LoRA under our
alias, that applying it changes the image, and that its loader matched every key without complaint. A second
LoRA, trained with `network.learn_trigger`, checks that the host registers its bundled trigger embedding and
applies it only where the prompt has the trigger word.

It is opt-in (marker ``host``) and skips unless a WebUI checkout is configured:

- ``SD_WEBUI_DIR``: the WebUI checkout (the folder holding ``launch.py``). Required.
- ``SD_WEBUI_PYTHON``: the host's Python. Default: ``$SD_WEBUI_DIR/venv/bin/python``.
- ``SD_WEBUI_HF_HOME``: ``HF_HOME`` for the host. Offline, the host's first model load needs the CLIP
  ViT-L/14 tokenizer and text config in a Hugging Face hub cache; our lab keeps a ready one in
  ``shared/host-lab/hf-cache`` of the work area (see ``shared/research/host-lab.md``). Default: inherited.

Example::

    SD_WEBUI_DIR=~/stable-diffusion-webui SD_WEBUI_HF_HOME=~/hf-cache python -m pytest -m host \\
        tests/test_host_lora_load.py

Costs: ~2 GiB of temp disk (the random checkpoint), up to ~9 GiB of RAM in the host, a few minutes on CPU.
The host writes its config, cache and outputs to a temp ``--data-dir``, never into the checkout.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import base_spec
from host_support import (
    LORA_TRACE_WORDS,
    Generated,
    Host,
    host_paths,
    log_problems,
    mean_abs_diff,
    request,
    safetensors_metadata,
    start_webui,
    stop,
    tracebacks_mentioning,
    txt2img,
    wait_for_api,
)

pytestmark = pytest.mark.host

LORA_NAME = "host_check_lora"
TRIGGER_LORA_NAME = "host_check_trigger"  # trained with network.learn_trigger: bundles an embedding "sks"

WEBUI_DIR, HOST_PYTHON = host_paths("the host LoRA test")


@dataclass(frozen=True)
class TrainedLora:
    """The trained LoRA file, its safetensors metadata, and the model folders the host is pointed at."""

    path: Path
    metadata: dict[str, str]
    checkpoint: Path
    models_dir: Path


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedLora]:
    """Train a 2-step LoRA (UNet and text encoder) on a full-size random SD1 checkpoint.

    Full size because A1111 builds its own LDM model from the file: a tiny checkpoint would not load there.
    The 2 GiB checkpoint is deleted at teardown (pytest keeps the last few temp dirs); the LoRA and the
    host's log stay for a post-mortem.
    """
    import gc

    import torch

    from lib_trainer.demo import make_dataset
    from lib_trainer.models.tiny import write_random_checkpoint
    from lib_trainer.spec import spec_from_dict
    from lib_trainer.train.job import run_job

    root = tmp_path_factory.mktemp("host")
    models = root / "models"
    checkpoint = write_random_checkpoint(
        models / "Stable-diffusion" / "sd1-random.safetensors", "sd1", size="full", dtype=torch.float16
    )
    dataset = make_dataset(root / "dataset", count=6)
    spec = base_spec(
        checkpoint,
        dataset,
        models / "Lora",
        name=LORA_NAME,
        network={"train_text_encoder": True},
        training={"max_steps": 2},
    )
    code = run_job(spec_from_dict(spec), root / "job")
    assert code == 0, (root / "job" / "events.jsonl").read_text()[-2000:]
    # a learnt trigger word that starts from "circle", so its vectors are far from what "sks" reads as
    spec = base_spec(
        checkpoint,
        dataset,
        models / "Lora",
        name=TRIGGER_LORA_NAME,
        network={"learn_trigger": True, "trigger_init": "circle"},
        training={"max_steps": 2},
    )
    code = run_job(spec_from_dict(spec), root / "job-trigger")
    assert code == 0, (root / "job-trigger" / "events.jsonl").read_text()[-2000:]
    gc.collect()  # give the trainer's memory back before the host loads its own copy of the model
    path = models / "Lora" / f"{LORA_NAME}.safetensors"
    assert path.is_file()
    yield TrainedLora(path, safetensors_metadata(path), checkpoint, models)
    checkpoint.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host(trained_lora: TrainedLora, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """Start the WebUI offline on CPU in fp32, seeing only our checkpoint and our LoRA; stop it at teardown."""
    data_dir = tmp_path_factory.mktemp("webui-data")
    log = data_dir / "webui.log"
    args = [
        "--ckpt-dir",
        str(trained_lora.models_dir / "Stable-diffusion"),
        "--lora-dir",
        str(trained_lora.models_dir / "Lora"),
        "--ckpt",
        str(trained_lora.checkpoint),
    ]
    started = start_webui(WEBUI_DIR, HOST_PYTHON, data_dir, log, args)
    try:
        wait_for_api(started, trained_lora.checkpoint)
        yield started
    finally:
        stop(started.process)
        sys.stderr.write(f"\nWebUI log: {log}\n")


@pytest.fixture(scope="module")
def images(host: Host) -> dict[str, Generated]:
    """The same seed twice without the LoRA and once with it, generated once for all tests below."""
    plain = "a sks shape"
    return {
        "plain": txt2img(host, plain),
        "plain_again": txt2img(host, plain),
        "lora": txt2img(host, f"{plain} <lora:{LORA_NAME}:1>"),
    }


def test_host_lists_lora_with_our_alias_and_base_version(host: Host, trained_lora: TrainedLora) -> None:
    """A1111 takes the alias from ss_output_name and the SD version from ss_base_model_version."""
    request(f"{host.url}/sdapi/v1/refresh-loras", {})
    loras = request(f"{host.url}/sdapi/v1/loras")
    ours = [lora for lora in loras if Path(lora["path"]).resolve() == trained_lora.path.resolve()]
    assert len(ours) == 1, loras
    lora = ours[0]
    assert lora["name"] == LORA_NAME
    assert lora["alias"] == trained_lora.metadata["ss_output_name"] == LORA_NAME
    assert lora["metadata"]["ss_base_model_version"] == "sd_v1"


def test_lora_changes_the_image_and_nothing_else_does(images: dict[str, Generated]) -> None:
    """Same seed without the LoRA is bit-identical, so any difference with it comes from the LoRA's weights."""
    plain = images["plain"].pixels.astype(np.int16)
    assert np.array_equal(plain, images["plain_again"].pixels.astype(np.int16))
    diff = float(np.abs(images["lora"].pixels.astype(np.int16) - plain).mean())
    assert diff > 0.5, f"mean abs pixel difference with the LoRA is only {diff:.3f}"


def test_host_loaded_every_key_without_complaint(
    host: Host, images: dict[str, Generated], trained_lora: TrainedLora
) -> None:
    """The loader logs unmatched keys only at DEBUG and carries on, so a silent partial load needs this grep."""
    log = host.log.read_text(errors="replace")
    problems = log_problems(log)
    assert not problems, "\n".join(problems)
    ours = tracebacks_mentioning(log, (*LORA_TRACE_WORDS, LORA_NAME))
    assert not ours, "\n\n".join(ours)

    infotext = images["lora"].infotext
    assert "Networks with errors" not in infotext and "Lora not found" not in infotext, infotext
    match = re.search(r'Lora hashes: "([^"]*)"', infotext)
    assert match, infotext
    expected = f"{LORA_NAME}: {trained_lora.metadata['sshs_model_hash'][:12]}"
    assert expected in match.group(1).split(", "), infotext
    assert "Lora hashes" not in images["plain"].infotext


def test_host_uses_the_bundled_trigger_embedding(host: Host) -> None:
    """A1111 registers a LoRA file's bundled embedding while the LoRA is in the prompt. At strength 0 the
    LoRA's weights add nothing, so a change can only come from the embedding, and only where the prompt has
    the trigger word; the infotext names the embedding as used."""
    tag = f"<lora:{TRIGGER_LORA_NAME}:0>"
    with_word = txt2img(host, "a sks shape")
    with_word_and_lora = txt2img(host, f"a sks shape {tag}")
    without_word = txt2img(host, "a red shape")
    without_word_but_lora = txt2img(host, f"a red shape {tag}")
    assert mean_abs_diff(with_word, with_word_and_lora) > 0.5, "the bundled embedding changed nothing"
    assert np.array_equal(without_word.pixels, without_word_but_lora.pixels), (
        "the LoRA at 0 changed the image"
    )
    assert re.search(r"TI hashes: \"?sks: ", with_word_and_lora.infotext), with_word_and_lora.infotext
    assert "TI hashes" not in without_word_but_lora.infotext
    problems = log_problems(host.log.read_text(errors="replace"))
    assert not problems, "\n".join(problems)
