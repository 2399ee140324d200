"""Our side of a case: the job spec and the command line that runs it under the probe."""

from __future__ import annotations

import json
from pathlib import Path

from .cases import Case

PROBE = Path(__file__).resolve().parent / "probe.py"


def notes(case: Case) -> list[str]:
    """What our trainer cannot match of a case; shown as a note next to its numbers."""
    out = []
    if case.cache_text_encoder_outputs:
        out.append("ours: no text-encoder output cache, encodes the captions every step")
    return out


def spec(case: Case, model: Path, data_dir: Path, out_dir: Path, steps: int, device: str) -> dict:
    """The job spec of `case`: the settings of cases.py, in our spec's terms (docs/job-spec.md)."""
    return {
        "spec_version": 1,
        "name": f"bench-{case.name}",
        "mode": "lora",
        "model": {"checkpoint": str(model), "vae": "none"},
        "dataset": {
            "path": str(data_dir),
            "caption_extension": ".txt",
            "cache_latents": "memory",
            "enable_bucket": False,
        },
        "network": {
            "rank": case.rank,
            "alpha": case.alpha,
            "train_unet": True,
            "train_text_encoder": False,
        },
        "training": {
            "max_steps": steps,
            "batch_size": case.batch_size,
            "resolution": case.resolution,
            "learning_rate": case.learning_rate,
            "optimizer": case.optimizer,
            "lr_scheduler": "constant",
            "mixed_precision": case.mixed_precision,
            "seed": case.seed,
            "max_grad_norm": 1.0,
            "gradient_checkpointing": case.gradient_checkpointing,
            "attention": "sdpa",
            "device": device,
        },
        "output": {
            "dir": str(out_dir),
            "save_every_epochs": 0,
            "save_precision": "fp16",
        },
        "samples": {"every_epochs": 0, "prompts": []},
    }


def command(python: list[str], spec_file: Path, job_dir: Path) -> list[str]:
    """Our CLI under the probe; run it with the repository root as the working directory."""
    return [*python, str(PROBE), "-m", "lib_trainer", "train", str(spec_file), "--job-dir", str(job_dir)]


def caching_seconds(events_file: Path) -> float | None:
    """How long latent caching took, from the job's events ("latents ready in 1.2s")."""
    if not events_file.is_file():
        return None
    for line in events_file.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        message = str(event.get("message", ""))
        if event.get("stage") == "cache" and message.startswith("latents ready in "):
            return float(message.removeprefix("latents ready in ").rstrip("s"))
    return None
