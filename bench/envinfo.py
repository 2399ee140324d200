"""What a result was measured with: package versions of each trainer's Python, commits, the device.

kohya runs under its own Python (its pinned transformers/diffusers differ from ours), so each side's
versions are asked from that Python itself, by a snippet that reads package metadata and torch's build.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "xformers",
    "safetensors",
    "numpy",
)

_SNIPPET = """
import json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "executable": sys.executable}
for name in PACKAGES:
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = "absent"
try:
    import torch
    out["torch_imported"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    out["device_name"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["device_name"] = torch.cuda.get_device_name(0)
        out["device_memory_bytes"] = props.total_memory
        out["device_multiprocessors"] = props.multi_processor_count
        out["device_capability"] = "%d.%d" % (props.major, props.minor)
        out["cudnn"] = torch.backends.cudnn.version()
except Exception as exc:
    out["torch_error"] = repr(exc)
print("BENCH-VERSIONS " + json.dumps(out))
""".replace("PACKAGES", repr(PACKAGES), 1)


def python_versions(python: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    """Versions as seen by `python` (a command list, e.g. ["env", "PYTHONPATH=...", "python3"])."""
    try:
        out = subprocess.run(
            [*python, "-c", _SNIPPET], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": repr(exc)}
    for line in out.stdout.splitlines():
        if line.startswith("BENCH-VERSIONS "):
            return json.loads(line.removeprefix("BENCH-VERSIONS "))
    return {"error": (out.stderr or out.stdout)[-2000:]}


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The host: CPU, cores this process may use, memory, OS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu_name(),
        "cores": cores,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "torch_threads": _torch_threads(),
    }


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def gpu(versions: dict) -> dict | None:
    """The first CUDA device as the trainer's Python sees it (`python_versions`), plus the driver.

    Asked in that child process: a CUDA context in the runner would hold VRAM during every measured run."""
    if not versions.get("device_name"):
        return None
    info = {
        "name": versions["device_name"],
        "memory_bytes": versions.get("device_memory_bytes"),
        "multiprocessors": versions.get("device_multiprocessors"),
        "capability": versions.get("device_capability"),
        "driver": None,
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return info
