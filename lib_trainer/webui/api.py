"""The REST API under /lora-trainer/v1 on the WebUI's own server (mounted only with --api or --nowebui).

Everything goes through the same TrainerService the tab uses, so a job started here is the same kind of
job as one started in the tab (same queue, GPU handoff, LoRA or checkpoint folder). The host does not protect routes that
extensions add, so the --api-auth check is done here, on every route. Errors are JSON bodies of our own
(`{"error": ..., "fields": [...]}`) returned directly, so they look the same whatever exception handlers the
host installs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from .. import __version__
from ..jobs import JobError, JobNotFound, JobStateError
from ..spec import SpecError, default_spec_dict
from ..spec.schema import AVAILABLE_MODES
from . import api_models as m
from . import compare as grids
from .dataset_summary import summarize_spec_dataset
from .host_api import CURRENT
from .install_status import InstallStatus
from .job_outputs import CHECKPOINT, LORA
from .presets import apply_preset
from .service import CompareError, CompareUnsupported, CompareValueError, TrainerService
from .uploads import UploadError, UploadItem, UploadLimits, unpack_zip, write_items

PREFIX = "/lora-trainer/v1"
TAG = "LoRA trainer"
DATASETS_SUBDIR = "datasets"
LIMITS = UploadLimits()
# A base64 body is 4/3 of the data, plus JSON around it.
MAX_JSON_BODY = LIMITS.max_total_bytes * 4 // 3 + 1024**2


class ApiError(Exception):
    def __init__(self, status: int, message: str, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields or []


def _error(status: int, message: str, fields: list[tuple[str, str]] | None = None) -> JSONResponse:
    body = {"error": message, "fields": [{"field": f, "message": msg} for f, msg in fields or []]}
    return JSONResponse(status_code=status, content=body)


def _answers(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into JSON answers with the right status."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.fields)
        except SpecError as exc:
            return _error(422, "The job spec has problems; see fields.", list(exc.errors))
        except JobNotFound as exc:
            return _error(404, str(exc))
        except JobStateError as exc:
            return _error(409, str(exc))
        except UploadError as exc:
            return _error(exc.status, str(exc))
        except (CompareValueError, CompareUnsupported) as exc:
            return _error(422, str(exc))
        except (CompareError, JobError, grids.AxisError) as exc:
            return _error(409, str(exc))

    return wrapper


def _auth_dependency(credentials: dict[str, str] | None) -> list[Any]:
    """HTTP Basic with the WebUI's --api-auth users (the host checks only its own routes)."""
    if not credentials:
        return []
    basic = HTTPBasic(auto_error=False)

    def check(given: HTTPBasicCredentials | None = Depends(basic)) -> None:
        expected = credentials.get(given.username) if given else None
        if expected is None or not secrets.compare_digest(given.password.encode(), expected.encode()):
            raise HTTPException(
                status_code=401,
                detail="Wrong or missing user name and password (the WebUI's --api-auth).",
                headers={"WWW-Authenticate": "Basic"},
            )

    return [Depends(check)]


def _fields(model: type) -> list[str]:
    return list(getattr(model, "model_fields", None) or model.__fields__)  # pydantic 2 / 1


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump() if hasattr(model, "model_dump") else model.dict()


def _parse(model: type, raw: bytes) -> Any:
    return model.model_validate_json(raw) if hasattr(model, "model_validate_json") else model.parse_raw(raw)


def _schema(model: type) -> dict[str, Any]:
    return model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema()


def _job_view(service: TrainerService, job_id: str) -> m.JobView:
    progress = service.manager.progress(job_id, log_lines=0)
    fields = {k: progress.get(k) for k in _fields(m.JobView) if k in progress}
    fields["samples"] = [Path(p).name for p in progress.get("samples") or []]
    fields["gpu_mode"] = progress.get("mode")
    fields["resumable"] = bool(progress.get("resumable"))
    fields["last_seq"] = int(progress.get("last_seq") or 0)
    fields["files"] = list(progress.get("files") or [])
    outputs = service.job_outputs(job_id)
    kinds = outputs.kinds(fields["files"])
    fields["training_type"] = outputs.mode
    fields["checkpoint_files"] = [f for f, kind in kinds.items() if kind == CHECKPOINT]
    fields["lora_files"] = [f for f, kind in kinds.items() if kind == LORA]
    return m.JobView(**fields)


def _request_spec(service: TrainerService, body: m.JobRequest) -> tuple[dict[str, Any], str]:
    """The spec asked for (a preset under the caller's own values) and the checkpoint choice."""
    spec = default_spec_dict()
    if body.preset:
        try:
            spec = apply_preset(spec, service.presets.get(body.preset))
        except KeyError:
            titles = ", ".join(p.title for p in service.presets.list())
            raise ApiError(422, f'There is no preset "{body.preset}". Presets: {titles}.') from None
    for key, value in (body.spec or {}).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **copy.deepcopy(value)}
        else:
            spec[key] = copy.deepcopy(value)
    checkpoint = str((spec.get("model") or {}).get("checkpoint") or CURRENT)
    spec.setdefault("model", {})["checkpoint"] = CURRENT
    return spec, checkpoint


def _safe_file(service: TrainerService, job_id: str, name: str) -> Path:
    """A file of the job by name: inside its job folder, or one of the LoRA or checkpoint files it wrote.
    Nothing else."""
    record = service.manager.get(job_id)
    job_dir = Path(record.job_dir).resolve()
    if not name or "\\" in name or name.startswith("/") or ".." in Path(name).parts:
        raise ApiError(400, f'"{name}" is not a file name of this job.')
    for path in (job_dir / name, job_dir / "samples" / name, grids.compare_dir(job_dir) / name):
        resolved = path.resolve()
        if resolved.is_file() and resolved.is_relative_to(job_dir):
            return resolved
    for written in record.files:
        if Path(written).name == name and Path(written).is_file():
            return Path(written)
    raise ApiError(404, f'Job {job_id} has no file "{name}".')


def build_router(
    get_service: Callable[[], TrainerService],
    get_install: Callable[[], InstallStatus | None],
    credentials: dict[str, str] | None = None,
) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=[TAG], dependencies=_auth_dependency(credentials))
    errors = {
        401: {"model": m.ErrorResponse},
        404: {"model": m.ErrorResponse},
        409: {"model": m.ErrorResponse},
    }

    def datasets_dir(service: TrainerService) -> Path:
        return service.root / DATASETS_SUBDIR

    @router.get("/info", response_model=m.InfoResponse, responses=errors)
    @_answers
    def info():
        service = get_service()
        install = get_install()
        model = service.host.loaded_model()
        return m.InfoResponse(
            version=__version__,
            trainer=m.TrainerEnvironment(
                ok=install is None or install.ok,
                message=getattr(install, "message", ""),
                fix=getattr(install, "fix", ""),
            ),
            model=m.ModelView(**model.__dict__) if model else None,
            lora_dir=str(service.host.lora_dir()),
            checkpoint_dir=str(service.host.checkpoint_dir()),
            modes=list(AVAILABLE_MODES),
            datasets_dir=str(datasets_dir(service)),
            presets=[
                m.PresetView(title=p.title, description=p.description, builtin=p.builtin, spec=p.spec)
                for p in service.presets.list()
            ],
        )

    @router.post(
        "/check", response_model=m.CheckResponse, responses={**errors, 422: {"model": m.ErrorResponse}}
    )
    @_answers
    def check(body: m.JobRequest):
        service = get_service()
        spec, checkpoint = _request_spec(service, body)
        resolved, notes = service.prepare_spec(spec, checkpoint)
        model = service.resolve_model(checkpoint)
        summary = summarize_spec_dataset(resolved, resolved["model"].get("model_type"))
        report = m.DatasetReport(
            path=summary.folder,
            images=summary.image_count,
            captioned=summary.captioned,
            repeats_total=summary.train_images,
            buckets={f"{w}x{h}": n for w, h, n in summary.buckets},
            problems=summary.problems,
            warnings=summary.warnings,
        )
        return m.CheckResponse(
            ok=summary.ok, spec=resolved, model=m.ModelView(**model.__dict__), dataset=report, notes=notes
        )

    @router.post(
        "/jobs",
        status_code=201,
        response_model=m.SubmitResponse,
        responses={**errors, 422: {"model": m.ErrorResponse}, 503: {"model": m.ErrorResponse}},
    )
    @_answers
    def submit(body: m.JobRequest):
        install = get_install()
        if install is not None and not install.ok:
            raise ApiError(
                503, f"The trainer environment is not ready: {install.message} {install.fix}".strip()
            )
        service = get_service()
        spec, checkpoint = _request_spec(service, body)
        done = service.submit(
            spec, checkpoint=checkpoint, gpu_mode=body.gpu_mode, compare_when_done=body.compare_when_done
        )
        record = done.record
        return m.SubmitResponse(
            id=record.id,
            name=done.output_name,
            status=record.status,
            position=record.position,
            gpu_mode=done.gpu_mode,
            notes=done.notes,
        )

    @router.get("/jobs", response_model=list[m.JobView], responses=errors)
    @_answers
    def jobs():
        service = get_service()
        return [_job_view(service, r.id) for r in service.manager.list()]

    @router.get("/jobs/{job_id}", response_model=m.JobView, responses=errors)
    @_answers
    def job(job_id: str):
        return _job_view(get_service(), job_id)

    @router.get("/jobs/{job_id}/events", response_model=m.EventsResponse, responses=errors)
    @_answers
    def events(job_id: str, since: int = 0, limit: int = 1000):
        items = get_service().manager.events(job_id, since=since, limit=max(1, min(limit, 10000)))
        last = max([int(e.get("seq") or 0) for e in items], default=since)
        return m.EventsResponse(events=items, last_seq=last)

    @router.get("/jobs/{job_id}/files/{name:path}", responses={**errors, 400: {"model": m.ErrorResponse}})
    @_answers
    def file(job_id: str, name: str):
        return FileResponse(_safe_file(get_service(), job_id, name))

    def _action(job_id: str, action: str) -> m.ActionResponse:
        service = get_service()
        manager = service.manager
        if action == "cancel":
            record = manager.cancel(job_id)
            text = "stopping after this step" if record.status == "stopping" else record.status
        elif action == "resume":
            record = manager.resume(job_id)
            text = "continues from its last saved state"
        else:
            name = manager.get(job_id).name
            what = "checkpoint" if service.job_outputs(job_id).full else "LoRA"
            manager.remove(job_id)
            return m.ActionResponse(
                id=job_id, status="removed", message=f'"{name}" removed; its {what} files stay.'
            )
        return m.ActionResponse(id=job_id, status=record.status, message=f'"{record.name}": {text}')

    @router.post("/jobs/{job_id}/cancel", response_model=m.ActionResponse, responses=errors)
    @_answers
    def cancel(job_id: str):
        return _action(job_id, "cancel")

    @router.post("/jobs/{job_id}/resume", response_model=m.ActionResponse, responses=errors)
    @_answers
    def resume(job_id: str):
        return _action(job_id, "resume")

    @router.delete("/jobs/{job_id}", response_model=m.ActionResponse, responses=errors)
    @_answers
    def remove(job_id: str):
        return _action(job_id, "remove")

    @router.post(
        "/jobs/{job_id}/compare",
        response_model=m.CompareResponse,
        responses={**errors, 422: {"model": m.ErrorResponse}},
    )
    @_answers
    def compare(job_id: str, body: m.CompareRequestBody | None = None):
        service = get_service()
        request = service.compare_request(job_id)
        edits = {k: v for k, v in (_dump(body) if body else {}).items() if v is not None}
        done = service.compare(job_id, replace(request, **edits))
        return m.CompareResponse(
            image=base64.b64encode(done.path.read_bytes()).decode(),
            infotext=done.infotext,
            file=done.path.name,
            notes=done.notes,
        )

    @router.post(
        "/datasets",
        status_code=201,
        response_model=m.DatasetResponse,
        responses={**errors, 400: {"model": m.ErrorResponse}, 413: {"model": m.ErrorResponse}},
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": _schema(m.DatasetUpload)},
                    "application/zip": {"schema": {"type": "string", "format": "binary"}},
                },
                "required": True,
            }
        },
    )
    async def datasets(request: Request, name: str | None = None):
        """JSON ({name, items | zip_base64}) or a raw zip body (Content-Type: application/zip, ?name=...)."""
        try:
            return await _upload(request, name)
        except ApiError as exc:
            return _error(exc.status, exc.message)
        except UploadError as exc:
            return _error(exc.status, str(exc))

    async def _upload(request: Request, name: str | None) -> m.DatasetResponse:
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_JSON_BODY:
            raise ApiError(413, f"The upload is {length} bytes; the limit is {MAX_JSON_BODY}.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BODY:
                raise ApiError(413, f"The upload is larger than {MAX_JSON_BODY} bytes.")
        root = datasets_dir(get_service())
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("application/zip", "application/octet-stream", "application/x-zip-compressed"):
            if not name:
                raise ApiError(400, "Give the dataset's folder name as ?name=... with a zip body.")
            summary = await _in_thread(unpack_zip, bytes(body), root, name, LIMITS)
        elif kind == "application/json":
            try:
                upload = _parse(m.DatasetUpload, bytes(body))
            except ValueError as exc:
                raise ApiError(400, f"The JSON body is not a dataset upload: {exc}") from None
            if bool(upload.items) == bool(upload.zip_base64):
                raise ApiError(400, 'Give either "items" (images with captions) or "zip_base64", not both.')
            if upload.zip_base64:
                try:
                    data = base64.b64decode(upload.zip_base64, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(400, "zip_base64 is not valid base64.") from None
                summary = await _in_thread(unpack_zip, data, root, upload.name, LIMITS)
            else:
                items = [UploadItem(i.name, i.data_base64, i.caption) for i in upload.items or []]
                summary = await _in_thread(write_items, items, root, upload.name, LIMITS)
        else:
            raise ApiError(415, "Send JSON (application/json) or a zip file (application/zip).")
        return m.DatasetResponse(
            path=str(summary.path),
            images=summary.images,
            captions=summary.captions,
            bytes=summary.bytes,
            skipped=summary.skipped,
        )

    return router


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args)


def mount(app: FastAPI, router: APIRouter) -> bool:
    """Add the routes to the WebUI's app once (the app-started callback runs again after Reload UI)."""
    if any(getattr(r, "path", "").startswith(PREFIX) for r in app.routes):
        return False
    app.include_router(router)
    app.openapi_schema = None  # /docs is generated once; make it include these routes
    return True
