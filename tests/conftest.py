"""Shared fixtures: tiny random checkpoints and a small generated dataset, made once per test session.

Two environments run this suite (see the README): the trainer's `.venv` runs everything but tests/webui,
and `.venv-webui`, a stand-in for the WebUI's own Python (its gradio and pydantic 1, and no torch), runs
tests/webui. Which tests an environment collects follows from what it can import, found without importing
anything (torch must never be imported here).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Without gradio (the trainer's .venv): not the WebUI-side tests. Without torch (.venv-webui): only those.
collect_ignore = [] if importlib.util.find_spec("gradio") else ["webui"]
collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["test_*.py"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from lib_trainer.models.tiny import write_random_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {
        "sd1": write_random_checkpoint(root / "tiny-sd1.safetensors", "sd1"),
        "sd2": write_random_checkpoint(root / "tiny-sd2v.safetensors", "sd2", v_prediction=True),
        "sdxl": write_random_checkpoint(root / "tiny-sdxl.safetensors", "sdxl"),
    }


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from lib_trainer.demo import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "dataset", count=6)


def base_spec(model_path: Path, data_dir: Path, out: Path, **sections) -> dict:
    """A fast job: 64 px, rank 4 with alpha 2 (alpha != rank on purpose), fp32 files, no samples."""
    spec = {
        "spec_version": 1,
        "name": "t",
        "mode": "lora",
        "model": {"checkpoint": str(model_path), "vae": "none"},
        "dataset": {
            "path": str(data_dir),
            "trigger_word": "sks",
            "cache_latents": "memory",
            "min_bucket_reso": 64,
            "max_bucket_reso": 128,
        },
        "network": {"rank": 4, "alpha": 2, "train_text_encoder": False},
        "training": {
            "epochs": 2,
            "batch_size": 2,
            "resolution": 64,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "mixed_precision": "no",
            "seed": 7,
            "device": "cpu",
        },
        "output": {"dir": str(out), "save_every_epochs": 1, "save_precision": "fp32"},
        "samples": {"every_epochs": 0, "prompts": []},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            spec.setdefault(section, {}).update(values)
        else:
            spec[section] = values
    return copy.deepcopy(spec)
