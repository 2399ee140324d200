"""The quality tests' training pool: toy jobs in trainer processes, side by side, failures reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import harness as h
from . import toyworld as tw
from .training_pool import TrainingPool

pytestmark = pytest.mark.slow


def _job(root: Path, name: str, **model: str) -> dict:
    """Two subject pictures, one epoch: a few steps, enough to write a LoRA file."""
    data = tw.write_dataset(root / name / "data", tw.subject_set(1, 2), "sentence", name="ohwx shape")
    spec = h.toy_spec(data, root / name / "Lora", name, training={"epochs": 1})
    spec["model"].update(model)
    return spec


def _span(lora: h.TrainedLora) -> tuple[float, float]:
    times = {e["type"]: e["time"] for e in lora.events if e["type"] in ("start", "done")}
    return times["start"], times["done"]


def test_jobs_train_side_by_side_in_trainer_processes(tmp_path):
    pool = TrainingPool(slots=2)
    try:
        for name in ("a", "b"):
            pool.submit(name, _job(tmp_path, name), tmp_path / name / "job")
        with pytest.raises(ValueError, match="submitted twice"):
            pool.submit("a", _job(tmp_path, "a2"), tmp_path / "a2" / "job")
        results = {name: pool.result(name) for name in ("a", "b")}
    finally:
        pool.close()
    for name, lora in results.items():
        assert lora.final == tmp_path / name / "Lora" / f"{name}.safetensors" and lora.final.is_file()
        assert "starting:" in (lora.job_dir / "process.log").read_text(encoding="utf-8")  # its own process
    (a_start, a_done), (b_start, b_done) = _span(results["a"]), _span(results["b"])
    assert a_start < b_done and b_start < a_done, "the two jobs did not overlap"
    # the report's training time is that span
    assert results["a"].train_seconds == a_done - a_start and results["b"].train_seconds == b_done - b_start


def test_a_failed_job_names_the_trainers_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    pool = TrainingPool(slots=1)
    try:
        pool.submit("broken", _job(tmp_path, "broken", checkpoint=str(broken)), tmp_path / "broken" / "job")
        with pytest.raises(AssertionError, match=r"training broken failed \(\d+\).*broken\.safetensors"):
            pool.result("broken")
    finally:
        pool.close()


def test_a_trainer_that_cannot_start_fails_its_job_not_the_pool(tmp_path, monkeypatch):
    pool = TrainingPool(slots=1)
    monkeypatch.setattr(pool, "_command", lambda job_dir, resume: [str(tmp_path / "no-such-python")])
    try:
        pool.submit("nowhere", _job(tmp_path, "nowhere"), tmp_path / "nowhere" / "job")
        with pytest.raises(AssertionError, match=r"(?s)training nowhere failed \(-1\).*could not start"):
            pool.result("nowhere")
    finally:
        pool.close()
