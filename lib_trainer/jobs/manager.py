"""The job manager the WebUI process uses: a persisted FIFO queue of trainer runs, started, watched,
stopped and found again after a WebUI restart.

It lives in a normally imported module (not a script file), so "Reload UI" keeps it and its processes;
`get_manager` hands out one manager per job root for the whole process. It never imports torch or the
training libraries: the trainer runs in its own process and reports only through the job folder.

Threading: every public method is safe to call from any thread (gradio handlers, API routes, the watcher).
Hooks are called without the manager's lock held, so a hook that waits (for example for the WebUI's
generation lock) never freezes progress polling in the UI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import spec_from_dict, spec_to_dict
from .process import REPO_ROOT, TrainerCommand, TrainerProcess, default_trainer_command, trainer_env
from .records import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    GPU_MODES,
    QUEUED,
    RESUMABLE,
    RUNNING,
    STOPPING,
    JobRecord,
    new_job_id,
)
from .store import EventTail, QueueStore, atomic_write_json, resumable_state, tail_lines

log = logging.getLogger("lib_trainer.jobs")

UNEXPECTED_STOP = "the trainer stopped unexpectedly (WebUI restart or crash); see log"


class JobError(Exception):
    """A request the manager cannot carry out; the message is meant to be shown to the user as is."""


class JobNotFound(JobError, LookupError):
    pass


class JobStateError(JobError, ValueError):
    pass


@dataclass
class JobHooks:
    """Callbacks for the host adapter (GPU handoff, refreshing the WebUI's LoRA list).

    before_start(record) runs just before the trainer process is started; if it raises, the job is marked
    failed with the message and not started. after_finish(record) runs exactly once after each run ends
    (also when before_start failed, so the adapter can undo a half-done handoff, and for runs that ended
    while the WebUI was restarting). after_reattach(record) runs once for each run found still going when
    the manager starts (a WebUI restart): the restarted WebUI has loaded its model again, so an exclusive
    handoff must be redone. All run in the thread that calls `poll()` (normally the watcher); their
    exceptions are logged, never raised.
    """

    before_start: Callable[[JobRecord], None] | None = None
    after_finish: Callable[[JobRecord], None] | None = None
    after_reattach: Callable[[JobRecord], None] | None = None


def run_outcome(
    exit_code: int | None,
    terminal: dict[str, Any] | None,
    has_state: bool,
    killed: bool = False,
    process_log_hint: str | None = None,
) -> tuple[str, str | None]:
    """(status, error message) of a run that ended, from its last terminal event and its exit code.

    The event wins when there is one (it says what happened in the trainer's own words); the exit code
    is the fallback for a trainer that died before it could write one, and is unknown (None) for a run
    that ended while no manager was its parent.
    """
    kind = terminal.get("type") if terminal else None
    if kind == "done":
        return DONE, None
    if kind == "cancelled":
        return (RESUMABLE if terminal.get("resumable") and has_state else CANCELLED), None
    if kind == "error":
        return FAILED, str(terminal.get("message") or "the trainer reported an error; see log")
    if killed:
        if has_state:
            return RESUMABLE, "stopped at once (second Cancel); it can continue from the last saved state"
        return CANCELLED, "stopped at once (second Cancel); nothing was saved from this run"
    if exit_code == 0:
        return DONE, None
    if exit_code == 3:
        return (RESUMABLE if has_state else CANCELLED), None
    if exit_code is None:
        return (RESUMABLE if has_state else FAILED), UNEXPECTED_STOP
    hint = f": {process_log_hint}" if process_log_hint else ""
    message = (
        f"the trainer stopped unexpectedly (exit code {exit_code}){hint}. See process.log in the job folder."
    )
    return (RESUMABLE if has_state else FAILED), message


class JobManager:
    """Queue, start, watch, stop and re-attach trainer processes for the jobs under `root`.

    root/queue.json holds the records and the queue order; root/<job id>/ is each job's folder (job.json,
    events.jsonl, log, process.log, samples/, state/).

    trainer_command(job_dir, resume) gives the trainer's argv (default: the trainer environment's python
    with `-m lib_trainer run JOB_DIR [--resume] --quiet`); it runs in the repository folder with the
    WebUI's environment plus PYTHONPATH=<repository>, `env` on top, and CUDA_VISIBLE_DEVICES=<gpu> when
    the job names a GPU. Nothing starts until `poll()` (or the watcher) runs.
    """

    def __init__(
        self,
        root: Path,
        *,
        trainer_command: TrainerCommand | None = None,
        env: dict[str, str] | None = None,
        max_running: int = 1,
        hooks: JobHooks | None = None,
        kill_grace: float = 10.0,
        log_lines: int = 40,
    ):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.trainer_command = trainer_command or default_trainer_command
        self.env = dict(env or {})
        self.max_running = max(1, int(max_running))
        self.hooks = hooks or JobHooks()
        self.kill_grace = float(kill_grace)
        self.log_lines = int(log_lines)
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._store = QueueStore(self.root)
        self._records, self._queue = self._store.load()
        self._procs: dict[str, TrainerProcess] = {}
        self._tails: dict[str, EventTail] = {}
        self._kill_at: dict[str, float] = {}
        self._owed: list[JobRecord] = []  # after_finish owed for records removed before it was delivered
        self._reattached: list[str] = []  # after_reattach owed
        self._dirty = False
        self._watcher: threading.Thread | None = None
        self._watch_interval = 1.0
        self._stop_watch = threading.Event()
        self._wake = threading.Event()
        with self._lock:
            self._reattach()
            self._save()

    # ------------------------------------------------------------ public API

    def submit(
        self, spec_dict: dict[str, Any], *, gpu: str | None = None, gpu_mode: str = "exclusive"
    ) -> JobRecord:
        """Validate the spec (a SpecError propagates unchanged, with its field errors), create the job
        folder with job.json and put the job at the end of the queue. It starts on the next poll."""
        if gpu_mode not in GPU_MODES:
            raise ValueError(f'gpu_mode must be "exclusive" or "shared", not {gpu_mode!r}')
        spec = spec_from_dict(spec_dict)
        gpu = str(gpu).strip() if gpu is not None and str(gpu).strip() else None
        with self._lock:
            job_id = new_job_id(spec.name, self.root)
            job_dir = self.root / job_id
            job_dir.mkdir(parents=True)
            atomic_write_json(job_dir / "job.json", spec_to_dict(spec))
            record = JobRecord(
                id=job_id, name=spec.name, job_dir=str(job_dir), created=time.time(), gpu=gpu, mode=gpu_mode
            )
            self._records[job_id] = record
            self._queue.append(job_id)
            self._save()
            view = record.copy()
        log.info("training job %s queued", job_id)
        self._wake.set()
        return view

    def list(self) -> list[JobRecord]:
        """Running jobs, then the queue in order, then finished jobs newest first."""
        with self._lock:
            active = sorted((r for r in self._records.values() if r.is_active), key=lambda r: r.started or 0)
            queued = [self._records[i] for i in self._queue]
            done = sorted(
                (r for r in self._records.values() if r.is_finished),
                key=lambda r: (r.finished or r.created, r.id),
                reverse=True,
            )
            return [r.copy() for r in (*active, *queued, *done)]

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._record(job_id).copy()

    def progress(self, job_id: str, log_lines: int | None = None) -> dict[str, Any]:
        """Everything a progress view needs, from the events written since the last call (not the whole file)."""
        with self._lock:
            record = self._record(job_id)
            summary = self._tail(record).update()
            job_dir = record.path
            out: dict[str, Any] = {
                "id": record.id,
                "name": record.name,
                "status": record.status,
                "position": record.position,
                **summary.progress,
                "message": summary.message,
                "warnings": list(summary.warnings),
                "samples": list(summary.samples),
                "loss_history": [list(p) for p in summary.loss_history],
                "files": list(summary.files or record.files),
                "output_name": summary.output_name or record.output_name,
                "error": record.error or (summary.error if record.is_active else None),
                "error_field": summary.error_field,
                "exit_code": record.exit_code,
                "created": record.created,
                "started": record.started,
                "finished": record.finished,
                "gpu": record.gpu,
                "mode": record.mode,
                "resumable": record.status in (RESUMABLE, FAILED) and resumable_state(job_dir),
                "last_seq": summary.last_seq,
                "job_dir": record.job_dir,
            }
        count = self.log_lines if log_lines is None else log_lines
        out["log_tail"] = tail_lines(job_dir / "log", count) or tail_lines(job_dir / "process.log", count)
        return out

    def events(self, job_id: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's events with seq > since, oldest first (for "events since N" API calls and charts)."""
        with self._lock:
            return self._tail(self._record(job_id)).read_since(int(since), limit)

    def cancel(self, job_id: str) -> JobRecord:
        """Queued: drop from the queue. Running: ask the trainer to stop after this step (it saves what the
        job says to keep). Already stopping: end the process group now (SIGTERM, then SIGKILL after
        `kill_grace` seconds, or at once on a third request). Finished: nothing to do."""
        with self._lock:
            record = self._record(job_id)
            now = time.time()
            if record.status == QUEUED:
                self._queue.remove(job_id)
                record.status, record.finished = CANCELLED, now
                log.info("training job %s removed from the queue", job_id)
            elif record.status == RUNNING and job_id not in self._procs:
                # Between before_start and the spawn: the starting thread sees this and does not spawn.
                record.status, record.finished = CANCELLED, now
            elif record.status == RUNNING:
                with contextlib.suppress(OSError):
                    (record.path / "stop").write_text("stop requested from the WebUI\n", encoding="utf-8")
                record.status, record.stop_requested = STOPPING, now
                log.info("training job %s: stop requested", job_id)
            elif record.status == STOPPING and job_id in self._procs and record.killed:
                self._procs[job_id].signal(hard=True)  # asked a third time: no more grace
                self._kill_at.pop(job_id, None)
            elif record.status == STOPPING and job_id in self._procs:
                record.killed = True
                self._procs[job_id].signal(hard=False)
                self._kill_at[job_id] = now + self.kill_grace
                log.info("training job %s: ending the trainer process now", job_id)
            self._save()
            view = record.copy()
        self._wake.set()
        return view

    def remove(self, job_id: str, delete_files: bool = False) -> None:
        """Forget a waiting or finished job; with delete_files also delete its job folder. LoRA files in the
        output folder are never touched."""
        with self._lock:
            record = self._record(job_id)
            if record.is_active:
                raise JobStateError(f'"{record.name}" is still running; cancel it first')
            if record.status == QUEUED:
                self._queue.remove(job_id)
            if not record.notified:
                record.notified = True
                self._owed.append(record.copy())
            keep = [*record.files, *self._tail(record).update().files]
            del self._records[job_id]
            self._tails.pop(job_id, None)
            self._save()
        if delete_files:
            self._delete_job_folder(record, keep)

    def move(self, job_id: str, new_index: int) -> JobRecord:
        """Move a waiting job to `new_index` in the queue (0 = next to start; out-of-range values clamp)."""
        with self._lock:
            record = self._record(job_id)
            if record.status != QUEUED:
                raise JobStateError(f'"{record.name}" is not waiting in the queue')
            self._queue.remove(job_id)
            index = min(max(0, int(new_index)), len(self._queue))
            self._queue.insert(index, job_id)
            self._save()
            return record.copy()

    def resume(self, job_id: str) -> JobRecord:
        """Queue a stopped or failed job again to continue from its saved state (`run --resume`)."""
        with self._lock:
            record = self._record(job_id)
            if record.status == QUEUED or record.is_active:
                raise JobStateError(f'"{record.name}" is already waiting or running')
            if not resumable_state(record.path):
                raise JobStateError(
                    f'"{record.name}" has no saved training state to continue from; start it as a new job'
                )
            record.status, record.resume = QUEUED, True
            record.error = record.exit_code = record.finished = None
            self._queue.append(job_id)
            self._save()
            view = record.copy()
        self._wake.set()
        return view

    def poll(self) -> None:
        """Reap ended runs, finish hard stops, deliver after_finish, start queued jobs while there is room.

        Cheap when nothing changed (no file is written) and safe to call from several threads: a call made
        while another is under way returns at once.
        """
        if not self._poll_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                reattached, self._reattached = self._reattached, []
                views = [self._records[i].copy() for i in reattached if i in self._records]
            for view in views:
                self._call_hook("after_reattach", view)
            with self._lock:
                self._reap()
                self._enforce_kills()
            self._notify_finished()
            self._start_queued()
            self._notify_finished()
            with self._lock:
                if self._dirty:
                    self._save()
        finally:
            self._poll_lock.release()

    def start_watcher(self, interval: float = 1.0) -> None:
        """Poll in a daemon thread every `interval` seconds (sooner after submit/cancel/resume). A second
        call while it runs only changes the interval."""
        with self._lock:
            self._watch_interval = float(interval)
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._stop_watch.clear()
            self._watcher = threading.Thread(target=self._watch, name="lora-trainer-jobs", daemon=True)
            self._watcher.start()

    def stop_watcher(self, timeout: float = 5.0) -> None:
        """Stop the watcher thread (running trainers keep running)."""
        with self._lock:
            thread = self._watcher
            self._watcher = None
        self._stop_watch.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------ internals

    def _watch(self) -> None:
        while not self._stop_watch.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("training job watcher: poll failed")
            self._wake.wait(self._watch_interval)
            self._wake.clear()

    def _record(self, job_id: str) -> JobRecord:
        record = self._records.get(job_id)
        if record is None:
            raise JobNotFound(f"no training job with id {job_id!r}")
        return record

    def _tail(self, record: JobRecord) -> EventTail:
        tail = self._tails.get(record.id)
        if tail is None:
            tail = self._tails[record.id] = EventTail(record.path / "events.jsonl")
        return tail

    def _save(self) -> None:
        for record in self._records.values():
            record.position = None
        for index, job_id in enumerate(self._queue):
            self._records[job_id].position = index
        try:
            self._store.save(self._records, self._queue)
            self._dirty = False
        except OSError as exc:  # keep working from memory; the next poll tries again
            self._dirty = True
            log.warning("could not save the training job list %s: %s", self._store.path, exc)

    def _reattach(self) -> None:
        """After a restart: follow trainers that still run, settle the ones that ended meanwhile."""
        restart = [r for r in self._records.values() if r.status in ACTIVE and r.pid is None]
        for record in sorted(restart, key=lambda r: r.started or 0, reverse=True):
            # The WebUI stopped between before_start and the spawn: nothing ran, so it waits again.
            record.status, record.started, record.notified = QUEUED, None, True
            record.runs = max(0, record.runs - 1)
            self._queue.insert(0, record.id)
        for record in self._records.values():
            if record.status not in ACTIVE:
                continue
            proc = TrainerProcess(record.pid, record.pid_fingerprint, record.path)
            running, _ = proc.poll()
            if running:
                self._procs[record.id] = proc
                self._reattached.append(record.id)
                if record.killed:
                    self._kill_at[record.id] = time.time() + self.kill_grace
                log.info(
                    "training job %s is still running (pid %s); following it again", record.id, record.pid
                )
            else:
                self._finish(record, None)

    def _reap(self) -> None:
        for job_id, proc in list(self._procs.items()):
            running, code = proc.poll()
            if not running:
                self._finish(self._records[job_id], code)

    def _finish(self, record: JobRecord, exit_code: int | None) -> None:
        summary = self._tail(record).update()
        terminal = (
            summary.terminal
            if summary.terminal and summary.terminal.get("seq", 0) > record.start_seq
            else None
        )
        hint = None
        if terminal is None and exit_code not in (None, 0, 3):
            hint = next(
                (line for line in reversed(tail_lines(record.path / "process.log", 20)) if line.strip()), None
            )
        record.status, record.error = run_outcome(
            exit_code, terminal, resumable_state(record.path), record.killed, hint
        )
        record.exit_code = exit_code
        record.finished = time.time()
        record.files = list(summary.files)
        record.output_name = summary.output_name or record.output_name
        record.pid = record.pid_fingerprint = None
        self._procs.pop(record.id, None)
        self._kill_at.pop(record.id, None)
        with contextlib.suppress(OSError):
            (record.path / "stop").unlink(missing_ok=True)
        self._dirty = True
        log.info(
            "training job %s ended: %s%s",
            record.id,
            record.status,
            f" ({record.error})" if record.error else "",
        )

    def _enforce_kills(self) -> None:
        now = time.time()
        for job_id, deadline in list(self._kill_at.items()):
            proc = self._procs.get(job_id)
            if proc is None:
                self._kill_at.pop(job_id, None)
            elif now >= deadline:
                proc.signal(hard=True)
                self._kill_at.pop(job_id, None)

    def _start_queued(self) -> None:
        while True:
            with self._lock:
                running = sum(1 for r in self._records.values() if r.is_active)
                if running >= self.max_running or not self._queue:
                    return
                record = self._records[self._queue.pop(0)]
                record.status, record.started, record.finished = RUNNING, time.time(), None
                record.pid = record.pid_fingerprint = record.exit_code = record.error = None
                record.stop_requested, record.killed, record.notified = None, False, False
                record.runs += 1
                record.start_seq = self._tail(record).update().last_seq
                self._save()
                view = record.copy()
            error = self._call_hook("before_start", view)
            with self._lock:
                if record.status != RUNNING:  # cancelled while before_start ran
                    continue
                if error is not None:
                    record.status, record.finished = FAILED, time.time()
                    record.error = f"the WebUI could not get ready for training: {error}"
                    self._save()
                    continue
                self._spawn(record)
                self._save()

    def _spawn(self, record: JobRecord) -> None:
        with contextlib.suppress(OSError):  # a stop file left from an earlier stop would end this run at once
            (record.path / "stop").unlink(missing_ok=True)
        argv = self.trainer_command(record.path, record.resume)
        try:
            proc = TrainerProcess.start(argv, record.path, trainer_env(self.env, record.gpu))
        except OSError as exc:
            record.status, record.finished = FAILED, time.time()
            if isinstance(exc, FileNotFoundError) and not Path(argv[0]).exists():
                record.error = (
                    f"the trainer environment is missing ({argv[0]} not found); restart the WebUI so the "
                    f"extension's install.py can set it up, or run install.py in {REPO_ROOT}"
                )
            else:
                record.error = f"could not start the trainer: {exc}"
            log.error("training job %s: %s", record.id, record.error)
            return
        record.pid, record.pid_fingerprint = proc.pid, proc.fingerprint
        self._procs[record.id] = proc
        log.info("training job %s started (pid %s)", record.id, proc.pid)

    def _notify_finished(self) -> None:
        with self._lock:
            owed, self._owed = self._owed, []
            for record in self._records.values():
                if record.is_finished and not record.notified:
                    record.notified = True
                    owed.append(record.copy())
            if owed:
                self._save()
        for record in owed:
            self._call_hook("after_finish", record)

    def _call_hook(self, name: str, record: JobRecord) -> Exception | None:
        hook = getattr(self.hooks, name, None)
        if hook is None:
            return None
        try:
            hook(record)
        except Exception as exc:  # noqa: BLE001 - a hook bug must not stop the queue
            log.exception("training job %s: the %s hook failed", record.id, name)
            return exc
        return None

    def _delete_job_folder(self, record: JobRecord, keep: list[str]) -> None:
        """Delete the job folder, but only a folder of ours inside root, and never a file the job reported
        as output (in case its output folder was set inside the job folder)."""
        job_dir = record.path.resolve()
        if job_dir.parent != self.root or job_dir.name != record.id or not job_dir.is_dir():
            return
        kept = {Path(f).resolve() for f in keep}
        for folder, dirs, files in os.walk(job_dir, topdown=False):
            for name in files:
                path = Path(folder) / name
                if path.resolve() not in kept:
                    with contextlib.suppress(OSError):
                        path.unlink()
            for name in dirs:
                with contextlib.suppress(OSError):
                    (Path(folder) / name).rmdir()  # fails, and so keeps it, when a kept file is inside
        with contextlib.suppress(OSError):
            job_dir.rmdir()


_MANAGERS: dict[Path, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def get_manager(root: Path, **kwargs: Any) -> JobManager:
    """The process-wide manager for `root`, created on first use. "Reload UI" re-runs the extension's
    scripts but not this module, so they get the same manager and its running jobs back. `hooks` given
    to a later call replace the earlier ones (the reloaded host adapter brings new callbacks); other
    settings of an existing manager stay as they are."""
    key = Path(root).resolve()
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(key)
        if manager is None:
            manager = _MANAGERS[key] = JobManager(key, **kwargs)
        elif kwargs.get("hooks") is not None:
            manager.hooks = kwargs["hooks"]
        return manager
