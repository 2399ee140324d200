"""The WebUI host adapter: the only module of this extension that imports the WebUI's `modules.*`.

It implements `host_api.Host` for AUTOMATIC1111 v1.10 and keeps the few differences of its forks in one
place (Forge: lazy model loading and no sd_vae; reForge: its own load-to-device call). References to the
host's code are to A1111 v1.10.1 (see the project's host contract notes).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

from modules import call_queue, paths, paths_internal, sd_models, shared

from .compare import CompareRequest, GridResult
from .host_api import CheckpointChoice, ModelInfo
from .xyz_axes import XYZ_TITLE, AxisError, xyz_run_kwargs

log = logging.getLogger("lib_trainer.webui")


def detect_kind() -> str:
    root = Path(paths.script_path)
    if (root / "backend").is_dir() and (root / "modules_forge").is_dir():
        return "forge"
    if (root / "ldm_patched").is_dir():
        return "reforge"
    return "a1111"


class WebUIHost:
    """`Host` for the running WebUI process."""

    def __init__(self) -> None:
        self.kind = detect_kind()
        self._unloaded_by_us = False

    # ------------------------------------------------------------ the loaded model

    def _current_model(self):
        """The loaded model object, never loading one (reading `shared.sd_model` would load it)."""
        model = getattr(sd_models.model_data, "sd_model", None)
        if model is None or getattr(model, "sd_checkpoint_info", None) is None:
            return None  # nothing loaded yet (Forge: its FakeInitialModel before the first generation)
        return model

    def loaded_model(self) -> ModelInfo | None:
        model = self._current_model()
        if model is None:
            return self._selected_model()
        info = model.sd_checkpoint_info
        model_type, prediction = _model_type(model)
        return ModelInfo(
            checkpoint=str(info.filename),
            title=str(info.title),
            vae=self._vae_file(),
            model_type=model_type,
            prediction_type=prediction,
            loaded=True,
        )

    def _selected_model(self) -> ModelInfo | None:
        """Forge loads lazily and A1111 may not have finished loading: use the selected checkpoint."""
        info = None
        params = getattr(sd_models.model_data, "forge_loading_parameters", None)
        if isinstance(params, dict):
            info = params.get("checkpoint_info")
        if info is None:
            try:
                info = sd_models.select_checkpoint()
            except Exception:  # noqa: BLE001 - "no checkpoints" is reported to the user as "no model"
                return None
        if info is None:
            return None
        return ModelInfo(
            checkpoint=str(info.filename), title=str(info.title), vae=self._vae_file(), loaded=False
        )

    def _vae_file(self) -> str | None:
        if self.kind == "forge":
            modules = shared.opts.data.get("forge_additional_modules") or []
            vaes = [
                m for m in modules if "vae" in Path(m).name.lower() or Path(m).parent.name.lower() == "vae"
            ]
            return str(vaes[0]) if vaes else None
        try:
            from modules import sd_vae
        except ImportError:
            return None
        vae = getattr(sd_vae, "loaded_vae_file", None)
        return str(vae) if vae else None

    def checkpoints(self) -> list[CheckpointChoice]:
        return [CheckpointChoice(str(i.title), str(i.filename)) for i in sd_models.checkpoints_list.values()]

    # ------------------------------------------------------------ paths and flags

    def lora_dir(self) -> Path:
        lora_dir = getattr(shared.cmd_opts, "lora_dir", None)
        return Path(lora_dir) if lora_dir else Path(paths_internal.models_path) / "Lora"

    def checkpoint_dir(self) -> Path:
        """`--ckpt-dir` if given, else sd_models.model_path (models/Stable-diffusion). The host lists both
        folders (sd_models.list_models: model_path plus command_path=cmd_opts.ckpt_dir), and with
        --ckpt-dir set that is the folder the user chose for their checkpoints."""
        ckpt_dir = getattr(shared.cmd_opts, "ckpt_dir", None)
        if ckpt_dir:
            return Path(ckpt_dir)
        model_path = getattr(sd_models, "model_path", None)
        return Path(model_path) if model_path else Path(paths_internal.models_path) / "Stable-diffusion"

    def data_dir(self) -> Path:
        return Path(paths_internal.data_path)

    def trainer_venv(self) -> Path | None:
        venv = getattr(shared.cmd_opts, "lora_trainer_venv", None)
        return Path(venv) if venv else None

    def trainer_gpu(self) -> str | None:
        gpu = getattr(shared.cmd_opts, "lora_trainer_gpu", None)
        return str(gpu) if gpu not in (None, "") else None

    def api_enabled(self) -> bool:
        """Whether the WebUI serves its HTTP API (--api, or --nowebui which is API only)."""
        return bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))

    def api_credentials(self) -> dict[str, str] | None:
        """--api-auth "user:password[,user2:password2]" as {user: password}; None when not set."""
        text = getattr(shared.cmd_opts, "api_auth", None)
        if not text:
            return None
        pairs = [item.split(":", 1) for item in str(text).split(",") if ":" in item]
        return {user.strip(): password for user, password in pairs}

    def gpu_memory(self) -> tuple[int, int] | None:
        torch = sys.modules.get("torch")  # the WebUI has imported it already; never import it here
        if torch is None or not torch.cuda.is_available():
            return None
        index = self.trainer_gpu()
        try:
            free, total = torch.cuda.mem_get_info(int(index) if index and index.isdigit() else None)
        except Exception:  # noqa: BLE001 - an odd device string: report "unknown", the caller plays safe
            return None
        return int(free), int(total)

    # ------------------------------------------------------------ GPU handoff

    def acquire_generation_lock(self) -> None:
        call_queue.queue_lock.acquire()

    def release_generation_lock(self) -> None:
        call_queue.queue_lock.release()

    def unload_model(self) -> None:
        model = self._current_model()
        if model is None:
            self._unloaded_by_us = False
            return
        if self.kind == "forge":
            sd_models.unload_model_weights()
        else:
            # A1111 sd_models.py:1005 (reForge: unload_model_weights(model=None)); both accept no arguments
            # and then use the loaded model. Called only when one is loaded, so nothing gets loaded here.
            sd_models.unload_model_weights()
        self._unloaded_by_us = True
        _free_cuda_cache()

    def restore_model(self) -> None:
        if not self._unloaded_by_us:
            return
        self._unloaded_by_us = False
        model = self._current_model()
        if model is None or self.kind == "forge":
            return  # Forge moves models back on demand at the next generation
        if self.kind == "reforge" and hasattr(sd_models, "load_model_to_device"):
            sd_models.load_model_to_device()
        else:
            # A1111 does not move an unloaded model back by itself (sd_models.py:955-956 returns early for
            # the same checkpoint), so without this the next generation would run on the CPU.
            sd_models.send_model_to_device(model)

    # ------------------------------------------------------------ LoRA list

    def refresh_loras(self) -> None:
        networks = sys.modules.get("networks")  # the built-in Lora extension's module, loaded by the host
        if networks is None or not hasattr(networks, "list_available_networks"):
            log.debug("the Lora built-in is not loaded; cannot refresh its list")
            return
        networks.list_available_networks()

    # ------------------------------------------------------------ checkpoint list

    def refresh_checkpoints(self) -> None:
        """sd_models.list_models() (A1111, Forge and reForge all have it): what the checkpoint list's refresh
        button runs. It only rescans files. A1111's version downloads SD 1.5 when it finds no checkpoint at
        all, so it is called only when the folder has one (ours, just written)."""
        list_models = getattr(sd_models, "list_models", None)
        if list_models is None:
            log.debug("this WebUI has no sd_models.list_models; cannot refresh its checkpoint list")
            return
        if not _has_model_file(self.checkpoint_dir()):
            return
        list_models()

    def lora_names(self, refresh: bool = False) -> list[str]:
        networks = sys.modules.get("networks")
        if networks is None or not hasattr(networks, "available_networks"):
            raise AxisError("The WebUI's built-in Lora extension is not loaded; it is needed for LoRA tags.")
        if refresh:
            networks.list_available_networks()
        return list(networks.available_networks)

    # ------------------------------------------------------------ X/Y/Z plot

    def xyz_module(self) -> Any | None:
        """The host's own X/Y/Z plot script module. It cannot be imported by name, and "Reload UI" makes a
        new one, so it is looked up in the host's script list every time (an extension's file of the same
        name is not the one: it must sit in the WebUI's own scripts folder)."""
        from modules import scripts

        for data in scripts.scripts_data:
            if os.path.basename(data.path) == "xyz_grid.py" and data.basedir == paths.script_path:
                return data.module
        return None

    def run_lora_grid(self, request: CompareRequest) -> GridResult:
        """Run the X/Y/Z plot in txt2img like the user would, without other scripts (a clean comparison).
        The caller holds the generation lock."""
        from modules import processing, scripts
        from modules.shared import opts, state

        script = next((s for s in scripts.scripts_txt2img.scripts if s.title().lower() == XYZ_TITLE), None)
        module = self.xyz_module()
        if script is None or module is None:
            raise AxisError(
                "The WebUI's X/Y/Z plot script is not loaded, so the comparison grid cannot be made."
            )
        if not getattr(script, "current_axis_options", None):  # its ui() has not run (no UI was built)
            script.current_axis_options = [
                o for o in module.axis_options if type(o) is module.AxisOption or not o.is_img2img
            ]
        labels = [o.label for o in script.current_axis_options]
        kwargs = xyz_run_kwargs(script.run, labels, request.axes())
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model,
            outpath_samples=opts.outdir_samples or opts.outdir_txt2img_samples,
            outpath_grids=opts.outdir_grids or opts.outdir_txt2img_grids,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            sampler_name=request.sampler,
            steps=request.steps,
            cfg_scale=request.cfg_scale,
            width=request.width,
            height=request.height,
            batch_size=1,
            n_iter=1,
            do_not_save_samples=True,
        )
        p.scripts = None  # no always-on scripts of other extensions in the comparison
        state.begin(job="lora_trainer_compare")
        try:
            processed = script.run(p, **kwargs)
        finally:
            state.end()
            p.close()
        if processed is None or not processed.images:
            raise RuntimeError(
                "The grid could not be made (interrupted, or see the WebUI console for the error)."
            )
        grid, infotext = processed.images[0], (processed.infotexts or [""])[0]
        return GridResult(png=_png_bytes(grid, infotext), infotext=infotext)


def _png_bytes(image: Any, infotext: str) -> bytes:
    """PNG with the infotext in the "parameters" text chunk, as the WebUI saves it (PNG Info reads it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _model_type(model) -> tuple[str | None, str | None]:
    """The job spec's model_type / prediction_type from the host's own flags: the host already read the
    sidecar .yaml or ran its v-prediction probe, so the trainer gets the same answer."""
    prediction = None
    parameterization = getattr(model, "parameterization", None)
    if parameterization in ("v", "eps"):
        prediction = "v_prediction" if parameterization == "v" else "epsilon"
    if getattr(model, "is_sdxl", False):
        return "sdxl", prediction
    if getattr(model, "is_sd2", False):
        return ("sd2-v" if prediction == "v_prediction" else "sd2"), prediction
    if getattr(model, "is_sd1", False):
        return "sd1", prediction
    return None, prediction


def _has_model_file(folder: Path) -> bool:
    """Whether a checkpoint file (.safetensors / .ckpt) is anywhere under `folder`; stops at the first."""
    for _root, _dirs, files in os.walk(folder):
        if any(name.lower().endswith((".safetensors", ".ckpt")) for name in files):
            return True
    return False


def _free_cuda_cache() -> None:
    try:
        from modules import devices

        devices.torch_gc()
    except Exception:  # noqa: BLE001 - only a cache flush
        log.debug("torch_gc failed", exc_info=True)
