"""Train several toy jobs side by side, each in its own trainer process, as the WebUI's job manager starts them.

The toy model's steps are too small for a second thread to help (a 240-step subject job: 18.4 s on two
threads, 19.1 s on one, this repo's 2-core CPU), so one single-threaded trainer per core trains two jobs in
the time of one. The quality tests start their jobs together and judge each as soon as it is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lib_trainer.jobs.process import make_trainer_command, spawn, trainer_env
from lib_trainer.spec import spec_from_dict, spec_to_dict

from .harness import TrainedLora, trained_lora

THREADS_PER_JOB = 1
POLL_S = 0.2


def cpu_slots() -> int:
    """Cores this process may use (a CI container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Job:
    name: str
    job_dir: Path
    popen: subprocess.Popen | None = None
    code: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


class TrainingPool:
    """Runs submitted jobs in submission order, at most `slots` at once; `result(name)` waits for one.

    Submit the longest job first: it starts at once and the shorter ones share the other cores."""

    def __init__(self, slots: int | None = None):
        self.slots = slots or cpu_slots()
        self._queue: list[_Job] = []
        self._running: list[_Job] = []
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._command = make_trainer_command(sys.executable)
        self._env = trainer_env(
            {"OMP_NUM_THREADS": str(THREADS_PER_JOB), "MKL_NUM_THREADS": str(THREADS_PER_JOB)}
        )
        self._thread = threading.Thread(target=self._schedule, name="training-pool", daemon=True)
        self._thread.start()

    def submit(self, name: str, spec: dict, job_dir: Path) -> None:
        """Validate the spec here (a bad one fails the caller, not a process) and queue its job."""
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "job.json").write_text(json.dumps(spec_to_dict(spec_from_dict(spec))), encoding="utf-8")
        with self._lock:
            if name in self._jobs:
                raise ValueError(f"job {name!r} submitted twice")
            job = _Job(name, job_dir)
            self._jobs[name] = job
            self._queue.append(job)

    def result(self, name: str) -> TrainedLora:
        """Wait for the job; its LoRA files, or an AssertionError with the trainer's errors and log tail."""
        job = self._jobs[name]
        while not job.done.wait(1.0):
            if self._closed.is_set():
                raise AssertionError(f"training {name} was stopped before it finished")
        return trained_lora(name, job.code if job.code is not None else -1, job.job_dir)

    def free_cores(self) -> int:
        """Cores no trainer holds or is about to: how many threads judging may use without making a trainer
        (or itself) wait. One at least: judging goes on either way."""
        with self._lock:
            return max(1, self.slots - len(self._running) - len(self._queue))

    def close(self) -> None:
        """Stop the scheduler and kill any trainer still running (their own sessions outlive pytest)."""
        self._closed.set()
        self._thread.join(timeout=5)
        with self._lock:
            for job in self._running:
                if job.popen is not None and job.popen.poll() is None:
                    job.popen.kill()
                    job.popen.wait()

    def _schedule(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                for job in list(self._running):
                    code = job.popen.poll()
                    if code is not None:
                        job.code = code
                        self._running.remove(job)
                        job.done.set()
                while self._queue and len(self._running) < self.slots:
                    job = self._queue.pop(0)
                    try:
                        job.popen = spawn(self._command(job.job_dir, False), job.job_dir, self._env)
                    except OSError as exc:
                        # no interpreter, no room for process.log: fail the job, not the whole pool
                        with (job.job_dir / "process.log").open("a", encoding="utf-8") as log:
                            log.write(f"could not start the trainer: {exc}\n")
                        job.code = -1
                        job.done.set()
                        continue
                    self._running.append(job)
            time.sleep(POLL_S)
