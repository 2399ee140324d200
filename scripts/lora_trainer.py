"""Registers the "Train LoRA/DreamBooth" tab and the X/Y/Z plot's "LoRA NUM" / "LoRA STRENGTH" axes with the WebUI. Thin on purpose: the logic is in lib_trainer.webui.

The WebUI runs this file on every start and on "Reload UI". The job service lives in a normally imported
module (lib_trainer.webui.service), so a reload gets the same service and the same running jobs back.
Nothing here imports torch-heavy training libraries: training runs in a separate process.
"""

from __future__ import annotations

import logging

from modules import script_callbacks

from lib_trainer.jobs.process import REPO_ROOT
from lib_trainer.webui.host import WebUIHost
from lib_trainer.webui.install_status import read_install_status
from lib_trainer.webui.service import get_service

log = logging.getLogger("lib_trainer.webui")


def _service():
    return get_service(WebUIHost())


def _install_status(service):
    venv = service.host.trainer_venv() or REPO_ROOT / ".venv"
    return read_install_status(REPO_ROOT, venv)


def on_ui_tabs():
    from lib_trainer.webui.tab_controller import TabController
    from lib_trainer.webui.ui import TAB_ID, TAB_TITLE, build_tab

    service = _service()
    tab = build_tab(TabController(service, _install_status(service)))
    return [(tab.blocks, TAB_TITLE, TAB_ID)]


def register_xyz_axes() -> None:
    """Append the two axes to the host's X/Y/Z plot (idempotent). Called at import, because under
    --nowebui the API builds the script's axis list before any UI callback, and again before every UI
    build, because "Reload UI" re-runs the X/Y/Z script with a fresh list."""
    from lib_trainer.webui.xyz_axes import LoraAxes, register_axes

    host = WebUIHost()
    try:
        module = host.xyz_module()
        if module is None:
            log.warning(
                "the WebUI's X/Y/Z plot script is not loaded; the LoRA NUM / STRENGTH axes are not added"
            )
            return
        added = register_axes(module, LoraAxes(host.lora_names))
    except Exception:  # noqa: BLE001 - a changed X/Y/Z script must not take the tab down with it
        log.exception("could not add the LoRA NUM / STRENGTH axes to the X/Y/Z plot")
        return
    if added:
        log.debug("added X/Y/Z plot axes: %s", ", ".join(added))


def on_app_started(_demo, app):
    # Also under --nowebui (no tab): queued jobs start and running ones are followed again.
    service = _service()
    host = service.host
    if app is None or not host.api_enabled():
        return  # no --api: none of the /lora-trainer/v1 routes exist
    from lib_trainer.webui.api import build_router, mount

    router = build_router(_service, lambda: _install_status(_service()), host.api_credentials())
    if mount(app, router):
        log.info("LoRA trainer API at /lora-trainer/v1 (see /docs)")


register_xyz_axes()
script_callbacks.on_before_ui(register_xyz_axes)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
