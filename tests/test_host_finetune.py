"""The full fine-tune (mode "dreambooth") in a real AUTOMATIC1111 WebUI (v1.10.x): its checkpoint is listed,
loads and generates, and its extracted LoRA loads.

The WebUI starts offline on CPU with --api, this repository linked in as an extension and the repository's
.venv as the trainer environment; its checkpoint folder is a fresh folder holding (a link to) the full-size
random-weight SD1 base. A DreamBooth full fine-tune of 2 steps at 64 px (one generated class image, Adafactor
to keep memory down) is submitted through our REST API; then the new checkpoint must be in
/sdapi/v1/sd-models (the extension refreshes the list when the job is done; an explicit refresh must agree),
have exactly the base file's keys and shapes, load as the WebUI's model and generate, and the LoRA extracted
from it must load with `<lora:...>`.

Opt-in (marker ``host``), skipped unless ``SD_WEBUI_DIR`` is set (see ``host_support.py``);
``SD_WEBUI_TEST_CKPT`` may name an existing full-size SD1 ``.safetensors``. Costs: several minutes on CPU and
up to ~18 GiB of RAM (the WebUI's model plus the trainer's fp32 UNet, its gradients and the saved copy).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from host_support import (
    EXT_TRACE_WORDS,
    Host,
    host_paths,
    log_tail,
    request,
    start_webui,
    stop,
    tracebacks_mentioning,
    txt2img,
    wait_for_api,
)

pytestmark = pytest.mark.host

WEBUI_DIR, HOST_PYTHON = host_paths("the full fine-tune test")
REPO = Path(__file__).resolve().parent.parent
NAME = "hostft"
JOB_TIMEOUT_S = 1500
SPEC = {
    "name": NAME,
    "mode": "dreambooth",
    "dataset": {
        "trigger_word": "sks",
        "cache_latents": "memory",
        "min_bucket_reso": 64,
        "max_bucket_reso": 128,
    },
    "network": {"train_text_encoder": False},
    "training": {
        "resolution": 64,
        "max_steps": 2,
        "batch_size": 1,
        "mixed_precision": "no",
        "optimizer": "Adafactor",
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
    },
    "output": {"save_every_epochs": 0, "save_precision": "fp16"},
    "samples": {"every_epochs": 0},
    "dreambooth": {
        "instance_prompt": "a photo of sks shape",
        "class_prompt": "a photo of a shape",
        "num_class_images": 1,
        "class_steps": 2,
    },
    "finetune": {"extract_lora_rank": 4},
}


@dataclass(frozen=True)
class Lab:
    host: Host
    root: Path
    ckpt_dir: Path
    base: Path
    lora_dir: Path


def _link_or_make_base(root: Path, ckpt_dir: Path) -> Path:
    import torch

    from lib_trainer.models.tiny import write_random_checkpoint

    given = os.environ.get("SD_WEBUI_TEST_CKPT")
    if not given:
        return write_random_checkpoint(
            ckpt_dir / "sd1-random.safetensors", "sd1", size="full", dtype=torch.float16
        )
    source = Path(given).expanduser().resolve()
    target = ckpt_dir / source.name
    try:
        os.link(source, target)  # the fine-tune lands next to it; the real file is never touched
    except OSError:
        target.symlink_to(source)
    return target


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("host-finetune")
    ckpt_dir, lora_dir = root / "models" / "Stable-diffusion", root / "models" / "Lora"
    ckpt_dir.mkdir(parents=True)
    base = _link_or_make_base(root, ckpt_dir)
    data_dir = root / "webui-data"
    (data_dir / "extensions").mkdir(parents=True)
    (data_dir / "extensions" / "sd-webui-lora-trainer").symlink_to(REPO, target_is_directory=True)
    args = [
        "--api",
        "--ckpt-dir",
        str(ckpt_dir),
        "--lora-dir",
        str(lora_dir),
        "--ckpt",
        str(base),
        "--lora-trainer-venv",
        str(REPO / ".venv"),
    ]
    host = start_webui(WEBUI_DIR, HOST_PYTHON, data_dir, root / "webui.log", args)
    try:
        wait_for_api(host, base)
        yield Lab(host, root, ckpt_dir, base, lora_dir)
    finally:
        stop(host.process)
        sys.stderr.write(f"\nWebUI log: {host.log}\n")
        for path in ckpt_dir.glob("*.safetensors"):
            path.unlink(missing_ok=True)  # 2 GB each; a linked base only loses its link


def _run_job(lab: Lab) -> dict:
    from lib_trainer.demo import make_dataset

    dataset = make_dataset(lab.root / "dataset", count=2)
    spec = {**SPEC, "dataset": {**SPEC["dataset"], "path": str(dataset)}}
    api = f"{lab.host.url}/lora-trainer/v1"
    job = request(f"{api}/jobs", {"spec": spec})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job["status"] in ("queued", "running", "stopping"):
        if time.monotonic() > deadline:
            pytest.fail(f"the fine-tune did not finish in {JOB_TIMEOUT_S} s: {job}\n{log_tail(lab.host.log)}")
        time.sleep(5)
        job = request(f"{api}/jobs/{job['id']}")
    assert job["status"] == "done", f"{job}\n{log_tail(lab.host.log)}"
    return job


def test_the_fine_tuned_checkpoint_is_listed_loads_and_generates(lab: Lab) -> None:
    from lib_trainer.models.checkpoint_io import read_safetensors_header

    job = _run_job(lab)
    tuned = lab.ckpt_dir / f"{NAME}.safetensors"
    assert tuned.is_file(), job
    assert str(tuned) in job["files"], job["files"]
    base_shapes, _ = read_safetensors_header(lab.base)
    tuned_shapes, metadata = read_safetensors_header(tuned)
    assert tuned_shapes == base_shapes  # exactly the base file's keys and shapes
    assert metadata["modelspec.title"] == NAME

    def listed() -> list[dict]:
        return [m for m in request(f"{lab.host.url}/sdapi/v1/sd-models") if Path(m["filename"]) == tuned]

    assert listed(), "the extension did not refresh the WebUI's checkpoint list when the job was done"
    request(f"{lab.host.url}/sdapi/v1/refresh-checkpoints", {})
    [model] = listed()

    before = txt2img(lab.host, "a photo of sks shape")
    request(f"{lab.host.url}/sdapi/v1/options", {"sd_model_checkpoint": model["title"]})
    loaded = request(f"{lab.host.url}/sdapi/v1/options")["sd_model_checkpoint"]
    assert loaded.split(" [")[0] == model["title"].split(" [")[0] == f"{NAME}.safetensors", loaded  # + hash
    after = txt2img(lab.host, "a photo of sks shape")
    assert after.pixels.shape == (64, 64, 3) and after.pixels.std() > 0
    assert f"Model: {NAME}" in after.infotext, after.infotext
    assert f"Model: {NAME}" not in before.infotext

    lora = lab.lora_dir / f"{NAME}.safetensors"
    assert lora.is_file(), sorted(p.name for p in lab.lora_dir.rglob("*"))
    request(f"{lab.host.url}/sdapi/v1/refresh-loras", {})
    with_lora = txt2img(lab.host, f"a photo of sks shape <lora:{NAME}:1>")
    assert f"{NAME}: " in with_lora.infotext and "Lora hashes" in with_lora.infotext, with_lora.infotext

    log = lab.host.log.read_text(errors="replace")
    problems = tracebacks_mentioning(log, EXT_TRACE_WORDS, trim=True)
    assert not problems, "\n\n".join(problems)
    for failure in ("Lora not found", f"loading network {lora}", "Failed to load network"):
        assert failure not in log, log_tail(lab.host.log)
