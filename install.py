"""Create or update the trainer's own Python environment in `.venv/` beside this file.

Run by the WebUI on every start (and right after the Extensions tab's "Install from URL"), and by hand:
    python install.py [--dev] [--force] [--strict] [--skip-install] [--lora-trainer-venv DIR]

Why a separate environment: the WebUI pins its own diffusers/transformers versions, and the old DreamBooth
extension broke WebUIs by upgrading them. Here the host environment is never touched: the trainer gets a
venv of its own, which *sees* the host's torch (and xformers) through a .pth file instead of downloading a
second multi-GB CUDA build, and holds our pinned libraries, which take precedence inside the venv only.

Rules:
- Nothing to do (the marker in the venv matches our requirements, this Python and the host's torch folder):
  no network, no import of torch (its folder is found with importlib.util.find_spec), no file written;
  it returns in a fraction of a second.
- Flags come from the command line and from the COMMANDLINE_ARGS environment variable, which is how the
  WebUI passes its own flags to an extension's install.py. `--skip-install` (the WebUI's flag) installs
  and creates nothing: it only checks that the trainer environment is ready and says in one line what is
  missing if it is not.
- The outcome is written to `.install-status.json` beside this file (or to $LORA_TRAINER_STATUS_FILE):
  {ok, venv, message, fix, time}. The Train LoRA tab reads it (lib_trainer/webui/install_status.py) and
  shows the message and the fix instead of failing later.
- Exit code: 0 when the environment is ready. A failure (pip error, no network, broken venv) is printed
  with the exact command that fixes it, and exits with 0 when the WebUI runs this file (PYTHONPATH holds
  the WebUI's folder, with launch.py and modules/), so it never gets in the way of the WebUI starting, and
  with 1 otherwise (a standalone run, CI) or with --strict.
- `--dev` also installs the test tools, and creates `.venv-webui/`: a stand-in for the WebUI's own Python
  (its gradio, fastapi, pydantic 1, numpy and Pillow versions, and no torch) in which tests/webui run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _venv_from_args(argv: list[str]) -> str | None:
    """The WebUI passes its own command line; honour --lora-trainer-venv (see preload.py) there too."""
    for i, arg in enumerate(argv):
        if arg == "--lora-trainer-venv" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--lora-trainer-venv="):
            return arg.split("=", 1)[1]
    return None


def _webui_args() -> list[str]:
    """The flags the WebUI hands to install.py: it parses COMMANDLINE_ARGS the same way (shlex)."""
    value = os.environ.get("COMMANDLINE_ARGS", "")
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


ARGS = sys.argv[1:] + _webui_args()
VENV_FROM_ARGS = _venv_from_args(ARGS) or os.environ.get("LORA_TRAINER_VENV")
VENV = Path(VENV_FROM_ARGS or ROOT / ".venv")
REQUIREMENTS = ROOT / "lib_trainer" / "requirements.txt"
DEV_REQUIREMENTS = ROOT / "lib_trainer" / "requirements-dev.txt"
MARKER = VENV / "lora-trainer-install.json"
HOST_PTH = "_lora_trainer_host_torch.pth"
STATUS_FILE = Path(os.environ.get("LORA_TRAINER_STATUS_FILE") or ROOT / ".install-status.json")
# Used only when no torch is importable at all (standalone use on a machine without one).
FALLBACK_TORCH = os.environ.get("LORA_TRAINER_TORCH", "torch==2.13.0")
# --dev only: the WebUI's Python without torch, for tests/webui.
WEBUI_VENV = ROOT / ".venv-webui"
WEBUI_REQUIREMENTS = ROOT / "lib_trainer" / "requirements-webui-test.txt"
WEBUI_MARKER = WEBUI_VENV / "lora-trainer-webui-test.json"
WEBUI_PYTHONS = ("3.10", "3.11")  # what A1111 v1.10 runs on (its Pillow 9.5 has no wheels for newer ones)


def log(message: str) -> None:
    print(f"[lora-trainer] {message}", flush=True)


def python_in(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_python() -> Path:
    return python_in(VENV)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_torch_dirs() -> list[str]:
    """site-packages folders holding the torch (and xformers) that this Python can import, if any.

    Found with find_spec, which imports nothing: importing torch would cost seconds on every WebUI start.
    """
    dirs = []
    for name in ("torch", "xformers"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin or not spec.submodule_search_locations:
            continue  # not installed, or a stray folder of that name (a namespace package)
        folder = str(Path(spec.origin).resolve().parent.parent)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def wanted_state(dev: bool, torch_dirs: list[str]) -> dict:
    return {
        "requirements": sha256(REQUIREMENTS),
        "dev_requirements": sha256(DEV_REQUIREMENTS) if dev else None,
        "python": sys.version.split()[0],
        "host_torch_dirs": torch_dirs,
    }


def up_to_date(state: dict) -> bool:
    """Same requirements, same Python, same host torch; a dev install also satisfies a plain one."""
    if not (MARKER.is_file() and venv_python().is_file()):
        return False
    try:
        recorded = json.loads(MARKER.read_text(encoding="utf-8"))
    except ValueError:
        return False
    keys = ["requirements", "python", "host_torch_dirs"] + (
        ["dev_requirements"] if state["dev_requirements"] else []
    )
    return all(recorded.get(k) == state[k] for k in keys)


def run(cmd: list[str]) -> None:
    """Run a command, its output (stderr too: the WebUI shows only our stdout) passed on line by line.

    On failure, the CalledProcessError's output holds the command's last error lines (pip's "ERROR: ...").
    """
    log("$ " + " ".join(cmd))
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines = (lines + [line.strip()])[-50:]
    if proc.returncode:
        errors = [line for line in lines if line.startswith("ERROR:")] or lines[-1:]
        raise subprocess.CalledProcessError(proc.returncode, cmd, output="\n".join(errors[-2:]))


def pip_install(python: Path, *args: str) -> None:
    # The WebUI lets users point its pip at a mirror with INDEX_URL; follow the same setting.
    index = os.environ.get("INDEX_URL", "").strip()
    extra = ["--index-url", index] if index else []
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *extra, *args])


class BrokenVenv(Exception):
    """The venv's Python exists but cannot run: only deleting the folder helps."""


def site_packages_of_venv() -> Path:
    try:
        out = subprocess.run(
            [str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BrokenVenv(
            f"The trainer environment in {VENV} is broken: its Python does not run ({exc})"
        ) from exc
    return Path(out.stdout.strip())


def create_or_update(dev: bool) -> None:
    torch_dirs = host_torch_dirs()
    state = wanted_state(dev, torch_dirs)
    if up_to_date(state):
        log(f"trainer environment is up to date ({VENV})")
        return
    if not venv_python().is_file():
        log(f"creating the trainer environment in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    site = site_packages_of_venv()
    pth = site / HOST_PTH
    if torch_dirs:
        # Appended after the venv's own folder, so our pinned packages win and only missing ones (torch)
        # come from the host. pip installs into the venv and never uninstalls anything outside it.
        pth.write_text("\n".join(torch_dirs) + "\n", encoding="utf-8")
        log(f"reusing the torch found in {', '.join(torch_dirs)}")
    else:
        pth.unlink(missing_ok=True)
        pip_install(venv_python(), FALLBACK_TORCH)
    pip_install(venv_python(), "-r", str(REQUIREMENTS), *(["-r", str(DEV_REQUIREMENTS)] if dev else []))
    run(
        [
            str(venv_python()),
            "-c",
            "import torch, diffusers, transformers, peft, safetensors; print('trainer imports ok')",
        ]
    )
    MARKER.write_text(json.dumps(state, indent=1), encoding="utf-8")
    log("trainer environment ready")


def missing_part(dev: bool) -> str | None:
    """What keeps the trainer environment from being ready, or None if it is ready (no side effects)."""
    if not venv_python().is_file():
        return f"the trainer environment {VENV} does not exist"
    if not MARKER.is_file():
        return f"the trainer environment in {VENV} was never set up completely"
    if not up_to_date(wanted_state(dev, host_torch_dirs())):
        return f"the trainer environment in {VENV} is out of date (our requirements, this Python or its torch changed)"
    return None


# ------------------------------------------------------------------ --dev: the WebUI stand-in for tests/webui


def webui_base_python() -> str:
    """A Python of the WebUI's version: this one if it fits, else python3.11 / python3.10 from PATH."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" in WEBUI_PYTHONS:
        return sys.executable
    for version in reversed(WEBUI_PYTHONS):
        found = shutil.which(f"python{version}")
        if found:
            return found
    raise RuntimeError(f".venv-webui needs Python {' or '.join(WEBUI_PYTHONS)} (the WebUI's); none was found")


def create_or_update_webui_test_env() -> None:
    state = {"requirements": sha256(WEBUI_REQUIREMENTS)}
    python = python_in(WEBUI_VENV)
    try:
        recorded = json.loads(WEBUI_MARKER.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded == state and python.is_file():
        log(f"WebUI test environment is up to date ({WEBUI_VENV})")
        return
    if not python.is_file():
        log(f"creating the WebUI test environment (the WebUI's packages, no torch) in {WEBUI_VENV}")
        run([webui_base_python(), "-m", "venv", str(WEBUI_VENV)])
    pip_install(python, "-r", str(WEBUI_REQUIREMENTS))
    run([str(python), "-c", "import gradio, fastapi, pydantic, PIL, pytest; print('WebUI test imports ok')"])
    WEBUI_MARKER.write_text(json.dumps(state, indent=1), encoding="utf-8")
    log("WebUI test environment ready")


# ------------------------------------------------------------------ outcome: status file, fix, exit code


def run_by_webui() -> bool:
    """The WebUI runs install.py with PYTHONPATH=<its folder>, the one holding launch.py and modules/."""
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and (Path(entry) / "launch.py").is_file() and (Path(entry) / "modules").is_dir():
            return True
    return False


def fix_command(dev: bool) -> str:
    args = [sys.executable, str(ROOT / "install.py")]
    if dev:
        args.append("--dev")
    if VENV_FROM_ARGS:
        args += ["--lora-trainer-venv", str(VENV)]
    return subprocess.list2cmdline(args) if os.name == "nt" else shlex.join(args)


def write_status(ok: bool, message: str, fix: str = "") -> None:
    status = {"ok": ok, "venv": str(VENV), "message": message, "fix": fix}
    try:
        old = json.loads(STATUS_FILE.read_text(encoding="utf-8"))
        if ok and {k: old.get(k) for k in status} == status:
            return  # nothing new: a start with nothing to do writes nothing
    except (OSError, ValueError, AttributeError):
        pass
    try:
        tmp = STATUS_FILE.with_name(STATUS_FILE.name + ".tmp")
        tmp.write_text(json.dumps(dict(status, time=time.time()), indent=1), encoding="utf-8")
        os.replace(tmp, STATUS_FILE)
    except OSError as exc:
        log(f"could not write {STATUS_FILE}: {exc}")


def describe_failure(exc: Exception, dev: bool) -> tuple[str, str]:
    """(message, fix) for the console and the status file; the fix always names the command to run."""
    again = fix_command(dev)
    if isinstance(exc, BrokenVenv):
        return f"{exc}.", f"delete the folder {VENV}, then run: {again}"
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = [str(part) for part in exc.cmd] if isinstance(exc.cmd, list) else [str(exc.cmd)]
        what = next(
            (w for w in ("pip", "ensurepip", "venv") if w in cmd),
            "the import check" if "-c" in cmd else "a command",
        )
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        details = " / ".join(line.strip() for line in output.splitlines() if line.strip())[-400:]
        message = f"Could not set up the trainer environment in {VENV}: {what} failed" + (
            f": {details}" if details else "."
        )
        return (
            message,
            f"fix the problem shown in the console (often: no internet access for pip), then run: {again}",
        )
    if not isinstance(exc, OSError):
        traceback.print_exc(file=sys.stdout)  # unexpected: the traceback is the report
    message = f"Could not set up the trainer environment in {VENV}: {type(exc).__name__}: {exc}"
    return message, f"fix the problem shown in the console, then run: {again}"


def main(argv: list[str]) -> int:
    dev = "--dev" in argv
    failure_code = 1 if "--strict" in argv or not run_by_webui() else 0
    ready = f"Trainer environment ready ({VENV})."
    if "--skip-install" in argv:
        missing = missing_part(dev)
        if missing is None:
            write_status(True, ready)
            return 0
        fix = f"run: {fix_command(dev)}"
        log(f"--skip-install is set, so nothing was installed, but {missing}; to set it up, {fix}")
        write_status(False, f"The LoRA trainer is not set up: {missing}, and --skip-install is set.", fix)
        return failure_code
    if "--force" in argv:
        MARKER.unlink(missing_ok=True)
        WEBUI_MARKER.unlink(missing_ok=True)
    try:
        create_or_update(dev)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong: report it with the fix, let the WebUI start
        message, fix = describe_failure(exc, dev)
        log(message)
        log(f"to fix: {fix}")
        write_status(False, message, fix)
        return failure_code
    write_status(True, ready)
    if dev:
        try:
            create_or_update_webui_test_env()
        except Exception as exc:  # noqa: BLE001
            _, fix = describe_failure(exc, dev)
            log(f"could not set up the WebUI test environment in {WEBUI_VENV}: {type(exc).__name__}: {exc}")
            log(f"to fix: {fix}")
            return failure_code
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
