"""A host object for WebUI-side tests: what lib_trainer.webui.host provides inside a real WebUI, with a real
lock and a record of what the extension asked the host to do. Not a copy of the WebUI's modules."""

from __future__ import annotations

import threading
from pathlib import Path

from lib_trainer.webui.host_api import CheckpointChoice, ModelInfo

GIB = 1024**3


class RecordingHost:
    """A host object as the WebUI adapter provides one: a real lock, and a log of what was asked."""

    kind = "test"

    def __init__(self, root: Path, free_vram: int | None = None):
        self.root = root
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.free_vram = free_vram
        self.model = ModelInfo(
            checkpoint=str(root / "models" / "base.safetensors"),
            title="base.safetensors [abc]",
            vae=str(root / "models" / "my.vae.safetensors"),
            model_type="sd2-v",
            prediction_type="v_prediction",
        )
        for path in (self.model.checkpoint, self.model.vae, root / "models" / "other.safetensors"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"x")

    def loaded_model(self):
        return self.model

    def checkpoints(self):
        return [
            CheckpointChoice(self.model.title, self.model.checkpoint),
            CheckpointChoice("other.safetensors [def]", str(self.root / "models" / "other.safetensors")),
        ]

    def lora_dir(self):
        return self.root / "models" / "Lora"

    def checkpoint_dir(self):
        return self.root / "models" / "Stable-diffusion"

    def data_dir(self):
        return self.root

    def trainer_venv(self):
        return None

    def trainer_gpu(self):
        return "1"

    def gpu_memory(self):
        return None if self.free_vram is None else (self.free_vram, 24 * GIB)

    def acquire_generation_lock(self):
        self.lock.acquire()
        self.calls.append("lock")

    def release_generation_lock(self):
        self.calls.append("unlock")
        self.lock.release()

    def unload_model(self):
        self.calls.append("unload")

    def restore_model(self):
        self.calls.append("restore")

    def refresh_loras(self):
        self.calls.append("refresh")

    def refresh_checkpoints(self):
        self.calls.append("refresh_checkpoints")

    def lora_names(self, refresh=False):
        return sorted(p.stem for p in self.lora_dir().rglob("*.safetensors"))

    def run_lora_grid(self, request):
        """A one-colour PNG with the infotext a grid would carry; the request is kept for the test."""
        import io

        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        from lib_trainer.webui.compare import GridResult

        assert not self.lock.acquire(blocking=False), "the caller must hold the generation lock"
        self.calls.append("grid")
        self.grid_requests = [*getattr(self, "grid_requests", []), request]
        infotext = f"{request.prompt}\nSteps: {request.steps}, Seed: {request.seed}, Script: X/Y/Z plot"
        info = PngInfo()
        info.add_text("parameters", infotext)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG", pnginfo=info)
        return GridResult(png=buffer.getvalue(), infotext=infotext)
