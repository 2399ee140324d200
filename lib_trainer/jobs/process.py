"""Starting, recognising and stopping trainer processes, without psutil if need be and on Windows too.

A trainer runs in its own session / process group with its output in JOB_DIR/process.log, so it keeps
going when the WebUI restarts (and Ctrl+C in the WebUI console does not reach it). A restarted WebUI finds
it again by pid; because pids are reused, the pid only counts when the process's start time (taken when it
was spawned) still matches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IS_WINDOWS = os.name == "nt"

TrainerCommand = Callable[[Path, bool], list[str]]


# ---------------------------------------------------------------- the command line


def trainer_python(venv: Path | None = None) -> Path:
    """The trainer environment's interpreter: `<repo>/.venv/bin/python` (`Scripts\\python.exe` on Windows)."""
    venv = Path(venv) if venv is not None else REPO_ROOT / ".venv"
    return venv / "Scripts" / "python.exe" if IS_WINDOWS else venv / "bin" / "python"


def make_trainer_command(python: str | os.PathLike | None = None) -> TrainerCommand:
    """A trainer_command for JobManager that runs `python -m lib_trainer run JOB_DIR [--resume] --quiet`."""
    exe = str(python) if python is not None else None

    def command(job_dir: Path, resume: bool) -> list[str]:
        argv = [exe or str(trainer_python()), "-m", "lib_trainer", "run", str(job_dir)]
        if resume:
            argv.append("--resume")
        argv.append("--quiet")
        return argv

    return command


default_trainer_command: TrainerCommand = make_trainer_command()


def trainer_env(extra: Mapping[str, str] | None = None, gpu: str | None = None) -> dict[str, str]:
    """The WebUI's environment with PYTHONPATH set to the repository (and nothing of the host's path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"  # process.log shows a crash's last words
    env["PYTHONIOENCODING"] = "utf-8"  # a non-ASCII LoRA name must not crash a cp1252 Windows console
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def spawn(argv: list[str], job_dir: Path, env: Mapping[str, str], cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """Start the trainer detached from the WebUI: own session/process group, output in process.log."""
    job_dir = Path(job_dir)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with (job_dir / "process.log").open("ab") as out:
        out.write(f"=== {stamp} starting: {subprocess.list2cmdline(argv)}\n".encode())
        out.flush()
        if IS_WINDOWS:
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
            extra: dict = {"creationflags": flags}
        else:
            extra = {"start_new_session": True}
        return subprocess.Popen(
            argv,
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            **extra,
        )


# ---------------------------------------------------------------- recognising a process


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may itself hold spaces and brackets)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _has_proc() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/stat").is_file()


def _win_query(pid: int) -> tuple[bool, int | None] | None:
    """(alive, creation time as a FILETIME integer) through the Win32 API; None when the pid is gone."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        code = wintypes.DWORD()
        alive = bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return alive, None
        return alive, (times[0].dwHighDateTime << 32) | times[0].dwLowDateTime
    finally:
        kernel32.CloseHandle(handle)


def pid_alive(pid: int) -> bool:
    """True while the process exists and has not exited (a zombie counts as exited)."""
    if pid <= 0:
        return False
    if _has_proc():
        fields = _proc_stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    psutil = _psutil()
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if IS_WINDOWS:  # os.kill(pid, 0) would terminate the process on Windows
        result = _win_query(pid)
        return bool(result and result[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(pid: int) -> str | None:
    """The process's start time as a string ("proc:<ticks>", "psutil:<t>", "win:<t>"); None if unknown."""
    if _has_proc():
        fields = _proc_stat(pid)
        return f"proc:{fields[19]}" if fields is not None and len(fields) > 19 else None
    psutil = _psutil()
    if psutil is not None:
        try:
            return f"psutil:{psutil.Process(pid).create_time():.3f}"
        except psutil.Error:
            return None
    if IS_WINDOWS:
        result = _win_query(pid)
        return f"win:{result[1]}" if result and result[1] is not None else None
    return None


def cmdline(pid: int) -> str | None:
    """The process's command line, as well as the platform lets us read it."""
    if _has_proc():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    psutil = _psutil()
    if psutil is not None:
        try:
            return " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return None
    if not IS_WINDOWS:
        try:
            out = subprocess.run(
                ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None
    return None


def is_same_process(pid: int | None, expected: str | None, job_dir: Path) -> bool:
    """Is `pid` still the trainer we started? Start times must match; without them, the command line
    must name the job folder (a reused pid belongs to some other program)."""
    if not pid or not pid_alive(pid):
        return False
    current = fingerprint(pid)
    if expected and current and expected.split(":")[0] == current.split(":")[0]:
        return current == expected
    line = cmdline(pid)
    return bool(line) and str(job_dir) in line


def reap_child(pid: int) -> int | None:
    """Exit code of `pid` if it is our own child and has exited (reaping it); None otherwise.

    Needed when a new manager in the same Python process takes over a process an old one started: the
    exited child would otherwise stay a zombie that looks alive to a pid check.
    """
    if IS_WINDOWS:
        return None
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------- one watched process


class TrainerProcess:
    """A running trainer: our own child (Popen) or one found again after a restart (pid only)."""

    def __init__(
        self, pid: int, fingerprint_: str | None, job_dir: Path, popen: subprocess.Popen | None = None
    ):
        self.pid = pid
        self.fingerprint = fingerprint_
        self.job_dir = Path(job_dir)
        self.popen = popen

    @classmethod
    def start(cls, argv: list[str], job_dir: Path, env: Mapping[str, str]) -> TrainerProcess:
        popen = spawn(argv, job_dir, env)
        return cls(popen.pid, fingerprint(popen.pid), job_dir, popen)

    def poll(self) -> tuple[bool, int | None]:
        """(still running, exit code); the exit code is None when we are not the process's parent."""
        if self.popen is not None:
            code = self.popen.poll()
            return code is None, code
        code = reap_child(self.pid)
        if code is not None:
            return False, code
        return is_same_process(self.pid, self.fingerprint, self.job_dir), None

    def signal(self, hard: bool) -> None:
        """SIGTERM (hard: SIGKILL) to the whole process group; TerminateProcess on Windows."""
        running, _ = self.poll()
        if not running:
            return
        if IS_WINDOWS:
            self._windows_stop(hard)
            return
        sig = signal.SIGKILL if hard else signal.SIGTERM
        try:
            os.killpg(self.pid, sig)  # started with start_new_session: the group id is the pid
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def _windows_stop(self, hard: bool) -> None:
        if self.popen is not None:
            if hard:
                self.popen.kill()
            else:
                self.popen.terminate()
            return
        psutil = _psutil()
        if psutil is not None:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(self.pid)
                if hard:
                    proc.kill()
                else:
                    proc.terminate()
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)  # TerminateProcess on Windows
