"""A LoRA made by our trainer, loaded by a real AUTOMATIC1111 WebUI (v1.10.x) through its HTTP API.

Unit tests check our key names and metadata against what we *believe* A1111 expects; this module asks the
host itself. It trains a LoRA on a full-size random SD1 checkpoint, starts the WebUI offline on CPU with
only that checkpoint and that LoRA in its model folders, and checks that the host lists the LoRA under our
alias, that applying it changes the image, and that its loader matched every key without complaint.

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

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import base_spec
from PIL import Image

pytestmark = pytest.mark.host

LORA_NAME = "host_check_lora"
START_TIMEOUT_S = 360.0
REQUEST_TIMEOUT_S = 600.0
# What A1111's Lora loader prints (with --loglevel DEBUG) when a file or some of its keys do not load.
LOG_PROBLEMS = (
    "didn't match keys",
    "Failed to match keys",
    "unmatched",
    "Failed to load network",
    "loading network",
    "Couldn't find network",
    "Lora not found",
    "Networks with errors",
    "couldn't find supported operation",
)
# A traceback that mentions one of these came from (or through) the Lora extension; others are not ours.
LORA_TRACE_WORDS = ("extensions-builtin/Lora", "networks.py", "network.py", "lora")


def _host_paths() -> tuple[Path, Path]:
    """The WebUI checkout and its Python, or skip the module saying what to set."""
    webui = os.environ.get("SD_WEBUI_DIR")
    if not webui:
        pytest.skip(
            "set SD_WEBUI_DIR to an A1111 WebUI checkout to run the host LoRA test", allow_module_level=True
        )
    webui_dir = Path(webui).expanduser()
    if not (webui_dir / "launch.py").is_file():
        pytest.skip(
            f"SD_WEBUI_DIR={webui_dir} has no launch.py; point it at an A1111 WebUI checkout",
            allow_module_level=True,
        )
    python = os.environ.get("SD_WEBUI_PYTHON")
    host_python = Path(python).expanduser() if python else webui_dir / "venv" / "bin" / "python"
    if not host_python.is_file():
        pytest.skip(
            f"no host Python at {host_python}; set SD_WEBUI_PYTHON to the WebUI's Python",
            allow_module_level=True,
        )
    return webui_dir, host_python


WEBUI_DIR, HOST_PYTHON = _host_paths()


@dataclass(frozen=True)
class TrainedLora:
    """The trained LoRA file, its safetensors metadata, and the model folders the host is pointed at."""

    path: Path
    metadata: dict[str, str]
    checkpoint: Path
    models_dir: Path


@dataclass(frozen=True)
class Host:
    """A running WebUI: its API base URL and the log file its stdout and stderr go to."""

    url: str
    log: Path
    process: subprocess.Popen


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read with the standard library only."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)).get("__metadata__", {})


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
    gc.collect()  # give the trainer's memory back before the host loads its own copy of the model
    assert code == 0, (root / "job" / "events.jsonl").read_text()[-2000:]
    path = models / "Lora" / f"{LORA_NAME}.safetensors"
    assert path.is_file()
    yield TrainedLora(path, _safetensors_metadata(path), checkpoint, models)
    checkpoint.unlink(missing_ok=True)


def _free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the host binds it a few seconds later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, payload: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """GET (or POST `payload` as JSON) and decode the JSON answer; urllib keeps the test dependency-free."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _wait_for_api(host: Host, checkpoint: Path) -> None:
    """Poll /sdapi/v1/sd-models until it lists our checkpoint; fail early if the host process dies."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            pytest.fail(f"WebUI exited with {host.process.returncode} while starting:\n{_log_tail(host.log)}")
        try:
            models = _request(f"{host.url}/sdapi/v1/sd-models", timeout=10)
            if any(Path(m["filename"]).name == checkpoint.name for m in models):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(2)
    pytest.fail(f"WebUI API did not answer within {START_TIMEOUT_S:.0f} s:\n{_log_tail(host.log)}")


def _stop(process: subprocess.Popen) -> None:
    """Terminate the host's whole process group (launch.py starts the server in the same group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def host(trained_lora: TrainedLora, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """Start the WebUI offline on CPU in fp32, seeing only our checkpoint and our LoRA; stop it at teardown."""
    data_dir = tmp_path_factory.mktemp("webui-data")
    log = data_dir / "webui.log"
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("COMMANDLINE_ARGS", None)  # A1111 appends it to argv; keep the run defined by the flags below
    if os.environ.get("SD_WEBUI_HF_HOME"):
        env["HF_HOME"] = os.environ["SD_WEBUI_HF_HOME"]
    args = [
        str(HOST_PYTHON),
        "launch.py",
        "--api",
        "--port",
        str(port),
        "--skip-prepare-environment",
        "--skip-install",
        "--skip-python-version-check",
        "--skip-torch-cuda-test",
        "--skip-version-check",
        "--use-cpu",
        "all",
        "--no-half",
        "--precision",
        "full",
        "--no-download-sd-model",
        "--loglevel",
        "DEBUG",
        "--data-dir",
        str(data_dir),
        "--ckpt-dir",
        str(trained_lora.models_dir / "Stable-diffusion"),
        "--lora-dir",
        str(trained_lora.models_dir / "Lora"),
        "--ckpt",
        str(trained_lora.checkpoint),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=WEBUI_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    started = Host(f"http://127.0.0.1:{port}", log, process)
    try:
        _wait_for_api(started, trained_lora.checkpoint)
        yield started
    finally:
        _stop(process)
        sys.stderr.write(f"\nWebUI log: {log}\n")


@dataclass(frozen=True)
class Generated:
    """One txt2img result: the image as a uint8 array and its infotext."""

    pixels: np.ndarray
    infotext: str


def _txt2img(host: Host, prompt: str) -> Generated:
    """A 64x64, 2-step Euler image with a fixed seed: cheap on CPU and deterministic for the same prompt."""
    payload = {
        "prompt": prompt,
        "negative_prompt": "",
        "seed": 1234,
        "subseed": -1,
        "subseed_strength": 0,
        "sampler_name": "Euler",
        "scheduler": "Automatic",
        "steps": 2,
        "cfg_scale": 7,
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        # Live previews would want models/VAE-approx under the empty --data-dir (a download, offline).
        "override_settings": {"live_previews_enable": False},
    }
    answer = _request(f"{host.url}/sdapi/v1/txt2img", payload)
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    info = json.loads(answer["info"])
    return Generated(np.asarray(image), info["infotexts"][0])


@pytest.fixture(scope="module")
def images(host: Host) -> dict[str, Generated]:
    """The same seed twice without the LoRA and once with it, generated once for all tests below."""
    plain = "a sks shape"
    return {
        "plain": _txt2img(host, plain),
        "plain_again": _txt2img(host, plain),
        "lora": _txt2img(host, f"{plain} <lora:{LORA_NAME}:1>"),
    }


def test_host_lists_lora_with_our_alias_and_base_version(host: Host, trained_lora: TrainedLora) -> None:
    """A1111 takes the alias from ss_output_name and the SD version from ss_base_model_version."""
    _request(f"{host.url}/sdapi/v1/refresh-loras", {})
    loras = _request(f"{host.url}/sdapi/v1/loras")
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
    problems = [line for line in log.splitlines() if any(p.lower() in line.lower() for p in LOG_PROBLEMS)]
    assert not problems, "\n".join(problems)
    tracebacks = [log[m.start() : m.start() + 3000] for m in re.finditer("Traceback", log)]
    ours = [tb for tb in tracebacks if any(word in tb for word in (*LORA_TRACE_WORDS, LORA_NAME))]
    assert not ours, "\n\n".join(ours)

    infotext = images["lora"].infotext
    assert "Networks with errors" not in infotext and "Lora not found" not in infotext, infotext
    match = re.search(r'Lora hashes: "([^"]*)"', infotext)
    assert match, infotext
    expected = f"{LORA_NAME}: {trained_lora.metadata['sshs_model_hash'][:12]}"
    assert expected in match.group(1).split(", "), infotext
    assert "Lora hashes" not in images["plain"].infotext
