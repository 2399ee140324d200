"""Job manager tests, host-free and fast: a fake trainer (written into tmp_path) stands in for
`python -m lib_trainer run JOB_DIR`, writing the same kind of events and honouring the stop file and signals
like the real one; one test at the end runs the real trainer on the tiny SD1 model through the default
command.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import base_spec

from lib_trainer.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    STOPPING,
    UNEXPECTED_STOP,
    JobHooks,
    JobManager,
    JobNotFound,
    JobStateError,
    get_manager,
    make_trainer_command,
    run_outcome,
    trainer_env,
    trainer_python,
)
from lib_trainer.jobs import process as jobs_process
from lib_trainer.jobs.store import EventTail, tail_lines
from lib_trainer.spec import SpecError

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="uses POSIX signals")

# The fake trainer. What it does is read from $FAKE_PLANS/<job name>.json: steps (3), step_time (0.02),
# outcome ("done" | "error" | "silent"), exit_code, hold (a file: wait before the first step until it
# exists), state_at (save a resumable state after that step), ignore_stop (ignore the stop file, like a
# trainer busy loading a model), ignore_sigterm (ignore every SIGTERM: only SIGKILL ends it).
FAKE_TRAINER = r"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

job = Path(sys.argv[1])
resume = "--resume" in sys.argv
spec = json.loads((job / "job.json").read_text(encoding="utf-8"))
plan_file = Path(os.environ["FAKE_PLANS"]) / f"{spec['name']}.json"
plan = json.loads(plan_file.read_text(encoding="utf-8")) if plan_file.is_file() else {}
events_path = job / "events.jsonl"
seq = len(events_path.read_text(encoding="utf-8").splitlines()) if events_path.is_file() else 0
stop_reason: list[str] = []


def emit(type_: str, **fields) -> None:
    global seq
    seq += 1
    event = {"seq": seq, "time": time.time(), "type": type_, **fields}
    with events_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
    with (job / "log").open("a", encoding="utf-8") as f:
        f.write(f"{type_} {fields.get('message', fields.get('step', ''))}\n")


def save_state(step: int, finished: bool = False) -> None:
    state = job / "state"
    state.mkdir(exist_ok=True)
    (state / "progress.json").write_text(json.dumps({"version": 1, "global_step": step, "finished": finished}))


def on_signal(signum, frame):
    if plan.get("ignore_sigterm"):
        return
    if stop_reason:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    stop_reason.append("signal")


signal.signal(signal.SIGTERM, on_signal)
steps = int(plan.get("steps", 3))
out_dir = Path(spec["output"]["dir"])
first = 0
if resume:
    first = json.loads((job / "state" / "progress.json").read_text())["global_step"]
emit("start", name=spec["name"], resume=resume, model="fake", model_type="SD1", device="cpu")
emit(
    "info",
    message=f"training {steps} steps; gpu={os.environ.get('CUDA_VISIBLE_DEVICES')}",
    total_steps=steps,
    total_epochs=1,
    steps_per_epoch=steps,
    output_name=spec["name"],
)
for step in range(first + 1, steps + 1):
    if plan.get("hold") and step == first + 1:
        while not Path(plan["hold"]).exists():
            time.sleep(0.01)
    stopping = (job / "stop").exists() and not plan.get("ignore_stop")
    if stopping or stop_reason:
        save_state(step - 1)
        emit("cancelled", reason="stop file", step=step - 1, files=[], resumable=True)
        sys.exit(3)
    time.sleep(float(plan.get("step_time", 0.02)))
    loss = 1.0 / step
    emit(
        "progress",
        step=step,
        total_steps=steps,
        epoch=1,
        total_epochs=1,
        loss=loss,
        smoothed_loss=loss,
        lr=1e-4,
        it_per_s=50.0,
        eta_s=(steps - step) * 0.02,
    )
    if step == plan.get("state_at"):
        save_state(step)
    if step == 2:
        sample = job / "samples" / "s2.png"
        sample.parent.mkdir(exist_ok=True)
        sample.write_bytes(b"png")
        emit("sample", path=str(sample), prompt="p", label="e1", step=step)
outcome = plan.get("outcome", "done")
if outcome == "error":
    emit("error", message="training.learning_rate: too high", field="training.learning_rate", kind="input")
    sys.exit(int(plan.get("exit_code", 2)))
if outcome == "silent":
    print("RuntimeError: boom in the fake trainer", file=sys.stderr)
    sys.exit(int(plan.get("exit_code", 1)))
out_dir.mkdir(parents=True, exist_ok=True)
lora = out_dir / f"{spec['name']}.safetensors"
lora.write_bytes(b"lora")
emit("checkpoint", path=str(lora), epoch=1, step=steps)
save_state(steps, finished=True)
emit("done", files=[str(lora)], output_name=spec["name"], steps=steps)
sys.exit(0)
"""


class FakeSetup:
    """Builds managers that run the fake trainer, and job specs whose name selects the fake's plan."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.root = tmp_path / "jobs"
        self.out = tmp_path / "loras"
        self.script = tmp_path / "fake_trainer.py"
        self.script.write_text(FAKE_TRAINER, encoding="utf-8")
        self.plans = tmp_path / "plans"
        self.plans.mkdir()
        self.managers: list[JobManager] = []
        self.holds: list[Path] = []
        self.commands: list[list[str]] = []

    def command(self, job_dir: Path, resume: bool) -> list[str]:
        argv = [sys.executable, str(self.script), str(job_dir), *(["--resume"] if resume else [])]
        self.commands.append(argv)
        return argv

    def manager(self, **kwargs) -> JobManager:
        kwargs.setdefault("trainer_command", self.command)
        kwargs.setdefault("env", {"FAKE_PLANS": str(self.plans)})
        manager = JobManager(self.root, **kwargs)
        self.managers.append(manager)
        return manager

    def spec(self, name: str, **plan) -> dict:
        if "hold" in plan:
            plan["hold"] = str(self.tmp / plan["hold"])
            self.holds.append(Path(plan["hold"]))
        (self.plans / f"{name}.json").write_text(json.dumps(plan), encoding="utf-8")
        return {
            "spec_version": 1,
            "name": name,
            "model": {"checkpoint": str(self.tmp / "model.safetensors")},
            "dataset": {"path": str(self.tmp / "data")},
            "output": {"dir": str(self.out)},
        }

    def release(self, hold: str) -> None:
        (self.tmp / hold).write_text("go")

    def cleanup(self) -> None:
        for hold in self.holds:
            hold.write_text("go")
        for manager in self.managers:
            manager.stop_watcher()
            for proc in list(manager._procs.values()):
                proc.signal(hard=True)


@pytest.fixture
def fake(tmp_path):
    setup = FakeSetup(tmp_path)
    yield setup
    setup.cleanup()


def wait_status(manager: JobManager, job_id: str, *statuses: str, timeout: float = 20.0):
    """Poll like the watcher would until the job reaches one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.poll()
        record = manager.get(job_id)
        if record.status in statuses:
            return record
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} is still {manager.get(job_id).status}, expected {statuses}")


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def started(job_dir: Path) -> bool:
    """The fake trainer has written its start event (so it has installed its signal handler)."""
    events = job_dir / "events.jsonl"
    return events.is_file() and '"start"' in events.read_text(encoding="utf-8")


# ---------------------------------------------------------------- queue


def test_submit_queues_in_order_and_persists(fake):
    manager = fake.manager()
    ids = [manager.submit(fake.spec(name)).id for name in ("Alpha", "beta", "Gamma Ray")]
    assert ids == sorted(ids)  # ids sort by creation time
    assert "-gamma-ray-" in ids[2]
    assert [r.id for r in manager.list()] == ids
    assert [r.position for r in manager.list()] == [0, 1, 2]
    record = manager.get(ids[0])
    assert record.status == QUEUED and record.name == "Alpha" and record.mode == "exclusive"
    job_json = json.loads((Path(record.job_dir) / "job.json").read_text(encoding="utf-8"))
    assert job_json["name"] == "Alpha" and job_json["training"]["epochs"] == 10  # the resolved spec

    again = fake.manager()
    assert [(r.id, r.status, r.position) for r in again.list()] == [
        (ids[0], QUEUED, 0),
        (ids[1], QUEUED, 1),
        (ids[2], QUEUED, 2),
    ]


def test_reorder_and_remove(fake):
    manager = fake.manager()
    a, b, c = (manager.submit(fake.spec(n)).id for n in ("a", "b", "c"))
    manager.move(c, 0)
    assert [r.id for r in manager.list()] == [c, a, b]
    manager.move(c, 99)  # clamps to the end
    assert [r.id for r in manager.list()] == [a, b, c]
    manager.remove(b)
    assert [r.id for r in manager.list()] == [a, c]
    with pytest.raises(JobNotFound):
        manager.get(b)
    assert [r.id for r in fake.manager().list()] == [a, c]  # persisted


def test_spec_errors_propagate_and_nothing_is_created(fake):
    manager = fake.manager()
    spec = fake.spec("bad")
    spec["training"] = {"epochs": 0, "lr": 1}
    with pytest.raises(SpecError) as info:
        manager.submit(spec)
    assert {path for path, _ in info.value.errors} == {"training.epochs", "training.lr"}
    assert manager.list() == []
    assert [p.name for p in fake.root.iterdir()] == ["queue.json"]
    with pytest.raises(ValueError, match="gpu_mode"):
        manager.submit(fake.spec("ok"), gpu_mode="half")


def test_damaged_queue_file_is_moved_aside(fake, caplog):
    fake.root.mkdir()
    (fake.root / "queue.json").write_text('{"jobs": [{"id": ', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lib_trainer.jobs"):
        manager = fake.manager()
    assert manager.list() == []
    assert "could not be read" in caplog.text
    assert [p.name for p in fake.root.glob("queue.json.damaged-*")]
    manager.submit(fake.spec("after"))
    assert len(fake.manager().list()) == 1


# ---------------------------------------------------------------- running


def test_runs_one_job_at_a_time_in_queue_order(fake):
    manager = fake.manager()
    first = manager.submit(fake.spec("first", hold="go1")).id
    second = manager.submit(fake.spec("second")).id
    manager.poll()
    assert manager.get(first).status == RUNNING and manager.get(first).pid
    assert manager.get(second).status == QUEUED and manager.get(second).position == 0
    for _ in range(5):
        manager.poll()
    assert manager.get(second).status == QUEUED
    fake.release("go1")
    wait_status(manager, first, DONE)
    done = wait_status(manager, second, DONE)
    assert done.started >= manager.get(first).finished
    assert done.exit_code == 0 and done.files == [str(fake.out / "second.safetensors")]
    assert done.output_name == "second" and done.pid is None
    assert [r.id for r in manager.list()] == [second, first]  # finished: newest first
    stamp = (fake.root / "queue.json").stat().st_mtime_ns
    for _ in range(3):
        manager.poll()
    assert (fake.root / "queue.json").stat().st_mtime_ns == stamp  # an idle poll writes nothing


def test_max_running_two(fake):
    manager = fake.manager(max_running=2)
    a = manager.submit(fake.spec("a", hold="go")).id
    b = manager.submit(fake.spec("b", hold="go")).id
    manager.poll()
    assert manager.get(a).status == RUNNING and manager.get(b).status == RUNNING
    fake.release("go")
    wait_status(manager, a, DONE)
    wait_status(manager, b, DONE)


def test_progress_from_events(fake):
    manager = fake.manager(log_lines=3)
    job = manager.submit(fake.spec("prog", steps=4, hold="go"), gpu="1").id
    assert manager.progress(job)["status"] == QUEUED and manager.progress(job)["step"] is None
    manager.poll()
    wait_for(lambda: manager.progress(job)["total_steps"] == 4)
    running = manager.progress(job)
    assert running["status"] == RUNNING and running["step"] is None
    assert running["message"] == "training 4 steps; gpu=1"  # CUDA_VISIBLE_DEVICES reached the trainer
    fake.release("go")
    wait_status(manager, job, DONE)
    progress = manager.progress(job)
    assert (progress["step"], progress["total_steps"], progress["epoch"], progress["total_epochs"]) == (
        4,
        4,
        1,
        1,
    )
    assert progress["loss"] == 0.25 and progress["smoothed_loss"] == 0.25 and progress["lr"] == 1e-4
    assert progress["it_per_s"] == 50.0 and progress["eta_s"] == 0.0
    assert progress["samples"] == [str(Path(manager.get(job).job_dir) / "samples" / "s2.png")]
    assert progress["files"] == [str(fake.out / "prog.safetensors")]
    assert [p[0] for p in progress["loss_history"]] == [1, 2, 3, 4]
    assert progress["log_tail"] == ["progress 4", "checkpoint 4", "done "]
    assert progress["error"] is None and progress["gpu"] == "1"

    events = manager.events(job, since=2)
    assert [e["seq"] for e in events] == list(range(3, progress["last_seq"] + 1))
    assert manager.events(job, since=progress["last_seq"]) == []
    assert len(manager.events(job, since=0, limit=2)) == 2


def test_event_tail_reads_only_new_complete_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(EventTail, "INDEX_EVERY", 4)
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.update().last_seq == 0  # no file yet
    lines = [json.dumps({"seq": i, "type": "progress", "step": i, "loss": 1.0}) for i in range(1, 12)]
    path.write_text("\n".join(lines[:10]) + "\n" + lines[10][:10], encoding="utf-8")  # a half-written line
    assert tail.update().last_seq == 10 and tail.summary.progress["step"] == 10
    offset = tail.offset
    assert offset == path.stat().st_size - 10
    assert tail.update().last_seq == 10 and tail.offset == offset  # nothing new: nothing read
    with path.open("a", encoding="utf-8") as f:
        f.write(lines[10][10:] + "\n")
    assert tail.update().last_seq == 11
    assert [e["seq"] for e in tail.read_since(6)] == [7, 8, 9, 10, 11]
    assert [e["seq"] for e in tail.read_since(0, limit=3)] == [1, 2, 3]
    assert tail._index_seq == [1, 5, 9]
    path.write_text(lines[0] + "\n", encoding="utf-8")  # replaced by a shorter file: start over
    assert tail.update().last_seq == 1


def test_tail_lines(tmp_path):
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)), encoding="utf-8")
    assert tail_lines(log, 3, block=16) == ["line 997", "line 998", "line 999"]
    assert tail_lines(tmp_path / "missing", 3) == []


# ---------------------------------------------------------------- failures


def test_error_event_marks_failed_with_its_message(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("err", outcome="error", exit_code=2)).id
    record = wait_status(manager, job, FAILED)
    assert record.error == "training.learning_rate: too high" and record.exit_code == 2
    progress = manager.progress(job)
    assert progress["error"] == record.error and progress["error_field"] == "training.learning_rate"


def test_silent_crash_marked_by_exit_code(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("crash", outcome="silent", exit_code=1)).id
    record = wait_status(manager, job, FAILED)
    assert record.exit_code == 1
    assert record.error == (
        "the trainer stopped unexpectedly (exit code 1): RuntimeError: boom in the fake trainer. "
        "See process.log in the job folder."
    )
    crashed_with_state = manager.submit(fake.spec("crash2", outcome="silent", state_at=1)).id
    assert wait_status(manager, crashed_with_state, RESUMABLE).error.startswith(
        "the trainer stopped unexpectedly"
    )


def test_missing_trainer_environment(fake):
    manager = fake.manager(trainer_command=make_trainer_command(fake.tmp / "no-venv" / "bin" / "python"))
    job = manager.submit(fake.spec("novenv")).id
    record = wait_status(manager, job, FAILED)
    assert "the trainer environment is missing" in record.error and "install.py" in record.error


@pytest.mark.parametrize(
    ("exit_code", "terminal", "has_state", "killed", "expected"),
    [
        (0, {"type": "done"}, True, False, DONE),
        (1, {"type": "done"}, False, False, DONE),  # the event wins
        (3, {"type": "cancelled", "resumable": True}, True, False, RESUMABLE),
        (3, {"type": "cancelled", "resumable": False}, False, False, CANCELLED),
        (3, {"type": "cancelled", "resumable": True}, False, False, CANCELLED),  # state gone
        (2, {"type": "error", "message": "bad"}, False, False, FAILED),
        (1, {"type": "error", "message": "bad"}, True, False, FAILED),  # failed, but resume() allowed
        (None, None, False, False, FAILED),
        (None, None, True, False, RESUMABLE),
        (-9, None, False, True, CANCELLED),
        (-9, None, True, True, RESUMABLE),
        (0, None, False, False, DONE),
        (3, None, True, False, RESUMABLE),
        (-11, None, False, False, FAILED),
    ],
)
def test_run_outcome(exit_code, terminal, has_state, killed, expected):
    status, error = run_outcome(exit_code, terminal, has_state, killed)
    assert status == expected
    if exit_code is None and terminal is None:
        assert error == UNEXPECTED_STOP


# ---------------------------------------------------------------- cancel


def test_cancel_queued(fake):
    calls = []
    manager = fake.manager(hooks=JobHooks(before_start=calls.append, after_finish=calls.append))
    a = manager.submit(fake.spec("a", hold="go")).id
    b = manager.submit(fake.spec("b")).id
    manager.poll()
    record = manager.cancel(b)
    assert record.status == CANCELLED and record.position is None
    assert [r.id for r in manager.list() if r.status == QUEUED] == []
    assert manager.cancel(b).status == CANCELLED  # a finished job: nothing to do
    fake.release("go")
    wait_status(manager, a, DONE)
    assert [r.id for r in calls] == [a, a]  # the cancelled queued job never ran: no hooks
    assert not (Path(manager.get(b).job_dir) / "process.log").exists()


def test_cancel_running_stops_gracefully_and_resume_continues(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("stopme", steps=5, hold="go")).id
    manager.poll()
    job_dir = Path(manager.get(job).job_dir)
    wait_for(lambda: started(job_dir))
    record = manager.cancel(job)
    assert record.status == STOPPING and (job_dir / "stop").is_file()
    fake.release("go")
    record = wait_status(manager, job, RESUMABLE)
    assert record.exit_code == 3 and record.error is None
    assert not (job_dir / "stop").exists()  # would stop the resumed run at once
    assert manager.progress(job)["resumable"] is True

    record = manager.resume(job)
    assert record.status == QUEUED and record.resume
    record = wait_status(manager, job, DONE)
    assert fake.commands[-1][-1] == "--resume" and fake.commands[0][-1] != "--resume"
    assert record.runs == 2
    starts = [e for e in manager.events(job) if e["type"] == "start"]
    assert [e["resume"] for e in starts] == [False, True]
    assert manager.progress(job)["step"] == 5
    with pytest.raises(JobStateError, match="no saved training state"):
        manager.resume(job)  # finished: nothing to continue


@POSIX_ONLY
def test_second_cancel_kills_the_process_group(fake):
    manager = fake.manager(kill_grace=0.3)
    job = manager.submit(
        fake.spec("stubborn", steps=1000, step_time=0.05, ignore_stop=True, ignore_sigterm=True)
    ).id
    manager.poll()
    job_dir = Path(manager.get(job).job_dir)
    wait_for(lambda: started(job_dir))
    pid = manager.get(job).pid
    assert manager.cancel(job).status == STOPPING
    time.sleep(0.2)
    manager.poll()
    assert manager.get(job).status == STOPPING  # ignores the stop file
    t0 = time.monotonic()
    record = manager.cancel(job)
    assert record.status == STOPPING and record.killed
    record = wait_status(manager, job, CANCELLED, timeout=10)
    assert time.monotonic() - t0 >= 0.3  # SIGTERM was ignored; SIGKILL after the grace period
    assert record.exit_code == -signal.SIGKILL
    assert "stopped at once" in record.error
    assert not jobs_process.pid_alive(pid)


@POSIX_ONLY
def test_third_cancel_kills_without_waiting(fake):
    manager = fake.manager(kill_grace=60)
    spec = fake.spec("deaf", steps=1000, step_time=0.05, ignore_stop=True, ignore_sigterm=True)
    job = manager.submit(spec).id
    manager.poll()
    wait_for(lambda: started(Path(manager.get(job).job_dir)))
    for _ in range(3):
        manager.cancel(job)
    record = wait_status(manager, job, CANCELLED, timeout=5)
    assert record.exit_code == -signal.SIGKILL


@POSIX_ONLY
def test_second_cancel_sigterm_ends_a_trainer_that_listens(fake):
    manager = fake.manager(kill_grace=30)
    job = manager.submit(fake.spec("slow", steps=1000, step_time=0.05, ignore_stop=True)).id
    manager.poll()
    wait_for(lambda: started(Path(manager.get(job).job_dir)))
    manager.cancel(job)
    manager.cancel(job)  # SIGTERM: like the real trainer, a stop request at the next step
    record = wait_status(manager, job, CANCELLED, RESUMABLE, timeout=10)
    assert record.killed


# ---------------------------------------------------------------- restart / re-attach


def test_reattach_after_restart_and_see_it_finish(fake):
    calls = []
    first = fake.manager()
    job = first.submit(fake.spec("long", hold="go")).id
    first.poll()
    pid = first.get(job).pid
    assert first.get(job).status == RUNNING
    del first  # the WebUI goes away; the trainer keeps running

    reattached = []
    second = fake.manager(hooks=JobHooks(after_finish=calls.append, after_reattach=reattached.append))
    record = second.get(job)
    assert record.status == RUNNING and record.pid == pid and job in second._procs
    second.poll()
    assert second.get(job).status == RUNNING
    assert [r.id for r in reattached] == [job]  # the host adapter redoes its GPU handoff, once
    second.poll()
    assert len(reattached) == 1
    fake.release("go")
    record = wait_status(second, job, DONE)
    assert record.files == [str(fake.out / "long.safetensors")]
    for _ in range(3):
        second.poll()
    assert [r.id for r in calls] == [job]


def test_reattach_after_the_webui_process_exits(fake):
    """A real restart: the WebUI process that started the trainer is gone, so we are not its parent."""
    spec = fake.spec("orphan", hold="go")
    code = f"""
import json, sys
from pathlib import Path
from lib_trainer.jobs import JobManager
script = {str(fake.script)!r}
manager = JobManager({str(fake.root)!r}, env={{"FAKE_PLANS": {str(fake.plans)!r}}},
                     trainer_command=lambda d, r: [sys.executable, script, str(d)])
job = manager.submit(json.loads({json.dumps(spec)!r}))
manager.poll()
print(job.id, manager.get(job.id).pid)
"""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    job, pid = out.stdout.split()
    calls = []
    manager = fake.manager(hooks=JobHooks(after_finish=calls.append))
    record = manager.get(job)
    assert record.status == RUNNING and record.pid == int(pid) and jobs_process.pid_alive(int(pid))
    manager.poll()
    assert manager.get(job).status == RUNNING
    fake.release("go")
    record = wait_status(manager, job, DONE)
    assert record.exit_code is None  # not our child: the events tell what happened
    assert record.files == [str(fake.out / "orphan.safetensors")]
    manager.poll()
    assert [r.id for r in calls] == [job]


@POSIX_ONLY
def test_dead_job_without_terminal_event_is_failed_or_resumable(fake):
    first = fake.manager()
    lost = first.submit(fake.spec("lost", hold="go")).id
    first.poll()
    pid = first.get(lost).pid
    lost_dir = Path(first.get(lost).job_dir)
    wait_for(lambda: started(lost_dir))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not jobs_process.pid_alive(pid))
    del first

    calls = []
    second = fake.manager(hooks=JobHooks(after_finish=calls.append))
    record = second.get(lost)
    assert record.status == FAILED and record.error == UNEXPECTED_STOP and record.pid is None
    second.poll()
    assert [r.id for r in calls] == [lost]  # owed for the run that ended during the restart

    # The same with a saved state: resumable, and persisted so.
    queue = json.loads((fake.root / "queue.json").read_text(encoding="utf-8"))
    queue["jobs"][0].update(status=RUNNING, pid=pid, pid_fingerprint="proc:1", error=None)
    (fake.root / "queue.json").write_text(json.dumps(queue), encoding="utf-8")
    state = Path(record.job_dir) / "state"
    state.mkdir()
    (state / "progress.json").write_text('{"version": 1, "global_step": 1, "finished": false}')
    assert fake.manager().get(lost).status == RESUMABLE
    assert fake.manager().get(lost).status == RESUMABLE


def test_dead_job_with_terminal_event_takes_it(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("fine")).id
    record = wait_status(manager, job, DONE)
    queue = json.loads((fake.root / "queue.json").read_text(encoding="utf-8"))
    queue["jobs"][0].update(status=STOPPING, pid=2**22 + 12345, pid_fingerprint="proc:1")
    (fake.root / "queue.json").write_text(json.dumps(queue), encoding="utf-8")
    again = fake.manager().get(job)
    assert again.status == DONE and again.files == record.files


def test_pid_reuse_is_not_reattached(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("reused")).id
    wait_status(manager, job, DONE)
    (Path(manager.get(job).job_dir) / "events.jsonl").unlink()  # as if it died before any event
    queue = json.loads((fake.root / "queue.json").read_text(encoding="utf-8"))
    # A live pid (this test process) whose start time is not the one recorded for the trainer.
    kind = jobs_process.fingerprint(os.getpid()).split(":")[0]
    queue["jobs"][0].update(status=RUNNING, pid=os.getpid(), pid_fingerprint=f"{kind}:1")
    (fake.root / "queue.json").write_text(json.dumps(queue), encoding="utf-8")
    again = fake.manager()
    record = again.get(job)
    assert (record.status, record.error, record.pid) == (FAILED, UNEXPECTED_STOP, None)
    assert job not in again._procs


def test_identity_check_without_start_time_uses_the_command_line(tmp_path):
    job_dir = tmp_path / "job-xyz"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(job_dir)])
    try:
        wait_for(lambda: jobs_process.pid_alive(proc.pid))
        assert jobs_process.is_same_process(proc.pid, jobs_process.fingerprint(proc.pid), job_dir)
        assert not jobs_process.is_same_process(proc.pid, "proc:1", job_dir)
        assert jobs_process.is_same_process(proc.pid, None, job_dir)  # no start time: the job dir is named
        assert not jobs_process.is_same_process(proc.pid, None, tmp_path / "other")
        assert not jobs_process.is_same_process(os.getpid(), None, job_dir)
    finally:
        proc.kill()
        proc.wait()
    assert not jobs_process.pid_alive(proc.pid)
    assert not jobs_process.is_same_process(proc.pid, None, job_dir)


def test_restart_between_before_start_and_spawn_requeues(fake):
    manager = fake.manager()
    a = manager.submit(fake.spec("a")).id
    b = manager.submit(fake.spec("b")).id
    queue = json.loads((fake.root / "queue.json").read_text(encoding="utf-8"))
    queue["queue"] = [b]
    queue["jobs"][0].update(status=RUNNING, pid=None, runs=1, notified=False)
    (fake.root / "queue.json").write_text(json.dumps(queue), encoding="utf-8")
    again = fake.manager()
    assert [(r.id, r.status, r.position) for r in again.list()] == [(a, QUEUED, 0), (b, QUEUED, 1)]
    assert again.get(a).runs == 0


# ---------------------------------------------------------------- hooks, watcher, singleton


def test_hooks_called_once_per_run_and_failures_are_contained(fake, caplog):
    calls = []

    def before(record):
        calls.append(("before", record.id, record.status))

    def after(record):
        calls.append(("after", record.id, record.status))
        raise RuntimeError("hook bug")

    manager = fake.manager(hooks=JobHooks(before_start=before, after_finish=after))
    job = manager.submit(fake.spec("hooked")).id
    with caplog.at_level(logging.ERROR, logger="lib_trainer.jobs"):
        wait_status(manager, job, DONE)
        for _ in range(5):
            manager.poll()
    assert calls == [("before", job, RUNNING), ("after", job, DONE)]
    assert "after_finish hook failed" in caplog.text

    def broken_before(record):
        raise RuntimeError("could not unload the model")

    calls.clear()
    manager.hooks = JobHooks(before_start=broken_before, after_finish=after)
    job2 = manager.submit(fake.spec("blocked")).id
    record = wait_status(manager, job2, FAILED)
    assert record.error == "the WebUI could not get ready for training: could not unload the model"
    assert record.runs == 1 and not (Path(record.job_dir) / "process.log").exists()
    manager.poll()
    assert calls == [("after", job2, FAILED)]  # lets the adapter undo a half-done handoff


def test_cancel_while_before_start_runs(fake):
    entered, release = threading.Event(), threading.Event()
    calls = []

    def before(record):
        entered.set()
        release.wait(10)

    manager = fake.manager(hooks=JobHooks(before_start=before, after_finish=calls.append))
    job = manager.submit(fake.spec("racy")).id
    poller = threading.Thread(target=manager.poll)
    poller.start()
    assert entered.wait(10)
    assert manager.progress(job)["status"] == RUNNING  # the UI is not blocked by the hook
    manager.poll()  # a second poll while one is under way returns at once
    assert manager.cancel(job).status == CANCELLED
    release.set()
    poller.join(10)
    assert not (Path(manager.get(job).job_dir) / "process.log").exists()
    manager.poll()
    assert [r.id for r in calls] == [job]


def test_watcher_runs_jobs_and_starts_once(fake):
    manager = fake.manager()
    manager.start_watcher(interval=0.05)
    thread = manager._watcher
    manager.start_watcher(interval=0.05)
    assert manager._watcher is thread
    assert [t.name for t in threading.enumerate()].count("lora-trainer-jobs") == 1
    job = manager.submit(fake.spec("watched")).id
    wait_for(lambda: manager.get(job).status == DONE)
    manager.stop_watcher()
    assert not thread.is_alive()


def test_get_manager_is_a_process_wide_singleton(fake):
    first = get_manager(fake.root, trainer_command=fake.command)
    hooks = JobHooks()
    second = get_manager(fake.tmp / "." / "jobs", hooks=hooks)
    assert second is first and first.hooks is hooks
    assert get_manager(fake.tmp / "other") is not first


def test_remove_finished_job_deletes_folder_but_not_loras(fake):
    manager = fake.manager()
    job = manager.submit(fake.spec("gone")).id
    manager.poll()
    with pytest.raises(JobStateError, match="still running"):
        manager.remove(job)
    record = wait_status(manager, job, DONE)
    inside = (
        Path(record.job_dir) / "keep" / "inside.safetensors"
    )  # an output folder set inside the job folder
    inside.parent.mkdir()
    inside.write_bytes(b"lora")
    manager._records[job].files.append(str(inside))
    manager.remove(job, delete_files=True)
    assert (fake.out / "gone.safetensors").is_file()
    assert inside.is_file()
    assert sorted(p.name for p in Path(record.job_dir).iterdir()) == ["keep"]
    with pytest.raises(JobNotFound):
        manager.get(job)


# ---------------------------------------------------------------- commands, environment, imports


def test_default_command_and_environment(monkeypatch):
    command = make_trainer_command("/opt/py")
    assert command(Path("/jobs/j1"), True) == [
        "/opt/py",
        "-m",
        "lib_trainer",
        "run",
        "/jobs/j1",
        "--resume",
        "--quiet",
    ]
    assert command(Path("/jobs/j1"), False)[-2:] == ["/jobs/j1", "--quiet"]
    repo = Path(__file__).resolve().parents[1]
    assert trainer_python() == repo / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert make_trainer_command()(Path("j"), False)[0] == str(trainer_python())
    monkeypatch.setenv("PYTHONPATH", "/host/stuff")
    env = trainer_env({"EXTRA": "1"}, gpu="1")
    assert env["PYTHONPATH"] == str(repo) and env["EXTRA"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert "CUDA_VISIBLE_DEVICES" not in trainer_env(None, None)


def test_importing_jobs_does_not_import_torch():
    code = (
        "import sys, lib_trainer.jobs\n"
        "heavy = [m for m in ('torch', 'diffusers', 'peft', 'transformers', 'accelerate', 'safetensors',"
        " 'numpy', 'PIL', 'bitsandbytes') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- the real trainer


def test_real_trainer_through_the_manager(tmp_path, tiny_models, tiny_dataset):
    """The default command (with this interpreter, which has the trainer packages) runs a tiny SD1 job."""
    calls = []
    manager = JobManager(
        tmp_path / "jobs",
        trainer_command=make_trainer_command(sys.executable),
        hooks=JobHooks(after_finish=calls.append),
    )
    out = tmp_path / "loras"
    spec = base_spec(tiny_models["sd1"], tiny_dataset, out, name="real", training={"epochs": 1})
    job = manager.submit(spec).id
    record = wait_status(manager, job, DONE, FAILED, timeout=240)
    progress = manager.progress(job)
    assert record.status == DONE, (record.error, progress["log_tail"])
    assert record.exit_code == 0 and record.output_name == "real"
    assert str(out / "real.safetensors") in record.files and (out / "real.safetensors").is_file()
    assert progress["step"] == progress["total_steps"] > 0
    assert any("done after" in line for line in progress["log_tail"])
    assert [r.id for r in calls] == [job]


def test_class_image_events_show_as_the_progress_message():
    from lib_trainer.jobs.store import EventSummary

    summary = EventSummary()
    summary.add({"seq": 1, "type": "info", "message": "class images 2/6"})
    assert summary.message == "class images 2/6"
    summary.add({"seq": 2, "type": "class_images", "generated": 6, "reused": 4, "total": 10, "folder": "f"})
    assert summary.message == "class images ready: 6 made, 4 reused"
