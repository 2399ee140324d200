"""Create or update the trainer's own Python environment in `.venv/` beside this file.

Run by the WebUI on every start (the Extensions tab installs run it too) and by hand outside a WebUI:
    python install.py [--dev] [--force]

Why a separate environment: the WebUI pins its own diffusers/transformers versions, and the old DreamBooth
extension broke WebUIs by upgrading them. Here the host environment is never touched: the trainer gets a
venv of its own, which *sees* the host's torch (and xformers) through a .pth file instead of downloading a
second multi-GB CUDA build, and holds our pinned libraries, which take precedence inside the venv only.
When nothing changed, this script finishes in well under a second without touching the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
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


VENV = Path(_venv_from_args(sys.argv) or os.environ.get("LORA_TRAINER_VENV") or ROOT / ".venv")
REQUIREMENTS = ROOT / "lib_trainer" / "requirements.txt"
DEV_REQUIREMENTS = ROOT / "lib_trainer" / "requirements-dev.txt"
MARKER = VENV / "lora-trainer-install.json"
HOST_PTH = "_lora_trainer_host_torch.pth"
# Used only when no torch is importable at all (standalone use on a machine without one).
FALLBACK_TORCH = os.environ.get("LORA_TRAINER_TORCH", "torch==2.13.0")


def log(message: str) -> None:
    print(f"[lora-trainer] {message}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def host_torch_dirs() -> list[str]:
    """site-packages folders holding the torch (and xformers) that this Python can import, if any."""
    dirs = []
    for name in ("torch", "xformers"):
        try:
            module = __import__(name)
        except Exception:  # noqa: BLE001 - a broken optional package just means "not reusable"
            continue
        folder = str(Path(module.__file__).resolve().parent.parent)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def wanted_state(dev: bool, torch_dirs: list[str]) -> dict:
    return {
        "requirements": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "dev_requirements": hashlib.sha256(DEV_REQUIREMENTS.read_bytes()).hexdigest() if dev else None,
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
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def site_packages_of_venv() -> Path:
    out = subprocess.run(
        [str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
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
        run([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", FALLBACK_TORCH])
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    if dev:
        cmd += ["-r", str(DEV_REQUIREMENTS)]
    run(cmd)
    run(
        [
            str(venv_python()),
            "-c",
            "import torch, diffusers, transformers, peft, safetensors; print('trainer imports ok')",
        ]
    )
    MARKER.write_text(json.dumps(state, indent=1), encoding="utf-8")
    log("trainer environment ready")


def main(argv: list[str]) -> int:
    dev = "--dev" in argv
    if "--force" in argv and MARKER.exists():
        MARKER.unlink()
    try:
        create_or_update(dev)
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"could not set up the trainer environment: {exc}")
        log(f"fix the problem above, then run: {sys.executable} {ROOT / 'install.py'} --force")
        return 1
    return 0


if __name__ == "__main__":
    # The WebUI runs this file as a script on every start (the Extensions tab's install does too).
    sys.exit(main(sys.argv[1:]))
