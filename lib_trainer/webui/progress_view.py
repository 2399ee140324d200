"""HTML for the Train tab's live view: progress, loss chart, queue, history, log tail and sample gallery.

Pure functions over `JobManager.progress(job_id)` dicts and `JobManager.list()` records (stdlib only, no
gradio, no torch), so they can be tested without a WebUI. Everything that came from the user or the trainer
(names, messages, paths, errors) is escaped. Fixed words are literals in their own elements, apart from the
numbers they describe, so the WebUI's localization file (which matches whole text nodes) can translate them.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from ..jobs.records import ACTIVE, CANCELLED, DONE, FAILED, FINISHED, QUEUED, RESUMABLE, RUNNING, STOPPING

STATUS_LABELS = {
    QUEUED: "Waiting",
    RUNNING: "Training",
    STOPPING: "Stopping",
    DONE: "Done",
    FAILED: "Failed",
    CANCELLED: "Cancelled",
    RESUMABLE: "Stopped",
}
GPU_MODE_LABELS = {"exclusive": "Exclusive GPU", "shared": "Shared GPU"}
# What a written model file is (job_outputs.LORA / CHECKPOINT): a full fine-tune's checkpoint is no LoRA.
FILE_KIND_LABELS = {"lora": "LoRA", "checkpoint": "Checkpoint"}
IDLE_TEXT = "No training job yet. Pick a dataset folder and press Start training."
NO_QUEUE_TEXT = "No jobs waiting."
NO_HISTORY_TEXT = "No finished jobs yet."
NO_LOG_TEXT = "No log lines yet."
RESUMABLE_TEXT = "can be resumed"
CHART_TITLE = "Loss"
CHART_EMPTY_TEXT = "Loss chart appears after the first steps"
CHART_RAW_TEXT = "per step"
CHART_SMOOTH_TEXT = "smoothed"
SAMPLE_CAPTION = "epoch {epoch} · prompt {prompt}"
MAX_CHART_POINTS = 600
SMOOTH_COLOR = "#f97316"  # the WebUI's accent orange: readable on light and dark backgrounds
DASH = "—"

# Sample files are `{output_name}_e{epoch:06d}_{index:02d}.png` (train/outputs.py make_samples).
_SAMPLE_NAME = re.compile(r"_e(\d+)_(\d+)\.[A-Za-z]+$")


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite float, or None for None, text, bools, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _get(record: Any, key: str) -> Any:
    """Field of a JobRecord or of its dict form."""
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def format_duration(seconds: float | None) -> str:
    """A duration as "1 h 05 min", "3 min 20 s" or "12 s"; "—" when unknown."""
    value = _num(seconds)
    if value is None or value < 0:
        return DASH
    total = int(round(value))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def format_time(timestamp: float | None, now: float | None = None) -> str:
    """Local time: "HH:MM" for today, else "YYYY-MM-DD HH:MM"; "—" when unknown."""
    value = _num(timestamp)
    if value is None or value <= 0:
        return DASH
    when = time.localtime(value)
    today = time.localtime(time.time() if now is None else now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


def _format_loss(value: float) -> str:
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"


def _kv(key: str, value: str, cls: str = "", unit: bool = False) -> str:
    """A fixed label (or unit, after the value) and its already escaped value, each in its own element."""
    key, value = f'<span class="k">{key}</span>', f'<span class="v">{value}</span>'
    inner = f"{value} {key}" if unit else f"{key} {value}"
    return f'<span class="lora-trainer-stat lora-trainer-{cls}">{inner}</span>'


def _of(done: float | None, total: float | None) -> str:
    return f"{DASH if done is None else int(done)} / {int(total) if total else DASH}"


def status_badge(status: str | None) -> str:
    label = STATUS_LABELS.get(status or "", status or DASH)
    return f'<span class="lora-trainer-badge" data-status="{_esc(status)}">{_esc(label)}</span>'


def _files_html(files: list[str] | None, kinds: Mapping[str, str] | None = None) -> str:
    """The files a job wrote, each model file labelled LoRA or Checkpoint when `kinds` ({path: kind}) says."""
    items = []
    for path in files or []:
        path = str(path)
        folder, name = os.path.split(path)
        kind = (kinds or {}).get(path, "")
        label = FILE_KIND_LABELS.get(kind)
        head = f'<li data-kind="{_esc(kind)}"><span class="k">{label}</span> ' if label else "<li>"
        items.append(
            f'{head}<span class="lora-trainer-file" title="{_esc(folder)}" '
            f'data-lora-trainer-copy="{_esc(path)}">{_esc(name or path)}</span></li>'
        )
    return f'<ul class="lora-trainer-files">{"".join(items)}</ul>' if items else ""


# ---------------------------------------------------------------- the progress panel


def render_progress_html(progress: dict | None, now: float | None = None) -> str:
    """The running (or last selected) job: status, bar, step/epoch, loss, speed, ETA, messages, files
    (labelled by the progress dict's optional "file_kinds", {path: kind})."""
    if not progress:
        return f'<div class="lora-trainer-progress lora-trainer-idle" data-status="idle"><p>{IDLE_TEXT}</p></div>'
    p = progress
    now = time.time() if now is None else now
    status = p.get("status") or ""
    parts = [
        f'<div class="lora-trainer-progress" data-status="{_esc(status)}" data-job="{_esc(p.get("id"))}">',
        '<div class="lora-trainer-head">',
        f'<span class="lora-trainer-name">{_esc(p.get("name") or p.get("id"))}</span> {status_badge(status)}',
    ]
    position = p.get("position")
    if status == QUEUED and isinstance(position, int):
        parts.append(" " + _kv("Place in queue", str(position + 1), "position"))
    if p.get("resumable"):
        parts.append(f' <span class="lora-trainer-note">{RESUMABLE_TEXT}</span>')
    parts.append("</div>")

    step, total = _num(p.get("step")), _num(p.get("total_steps"))
    fraction = None
    if status == DONE:
        fraction = 1.0
    elif step is not None and total:
        fraction = min(max(step / total, 0.0), 1.0)
    width = f"{100 * fraction:.1f}" if fraction is not None else "0"
    aria = f' aria-valuenow="{int(step)}" aria-valuemax="{int(total)}"' if step is not None and total else ""
    parts.append(
        f'<div class="lora-trainer-bar" role="progressbar" aria-valuemin="0"{aria}>'
        f'<div class="lora-trainer-bar-fill" style="width: {width}%"></div></div>'
    )

    stats = []
    step_text = _of(step, total)
    if fraction is not None:
        step_text += f' <span class="lora-trainer-percent">({100 * fraction:.0f}%)</span>'
    stats.append(_kv("Step", step_text, "step"))
    epoch, epochs = _num(p.get("epoch")), _num(p.get("total_epochs"))
    if epoch is not None or epochs:
        stats.append(_kv("Epoch", _of(epoch, epochs), "epoch"))
    loss, smooth = _num(p.get("loss")), _num(p.get("smoothed_loss"))
    if loss is not None:
        text = _kv("Loss", _format_loss(loss), "loss")
        if smooth is not None:
            text += " " + _kv("avg", _format_loss(smooth), "avg")
        stats.append(text)
    speed = _num(p.get("it_per_s"))
    if speed is not None and speed >= 1:
        stats.append(_kv("it/s", f"{speed:.2f}", "speed", unit=True))
    elif speed is not None and speed > 0:
        stats.append(_kv("s/it", f"{1 / speed:.1f}", "speed", unit=True))
    lr = _num(p.get("lr"))
    if lr is not None:
        stats.append(_kv("Learning rate", f"{lr:.2e}", "lr"))
    if status == RUNNING:
        stats.append(_kv("ETA", format_duration(p.get("eta_s")), "eta"))
    started, finished = _num(p.get("started")), _num(p.get("finished"))
    if started and status != QUEUED:
        end = finished if finished is not None and status not in ACTIVE else now
        stats.append(_kv("Elapsed", format_duration(end - started), "elapsed"))
    parts.append(f'<div class="lora-trainer-stats">{" ".join(stats)}</div>')

    if p.get("message"):
        parts.append(f'<div class="lora-trainer-message">{_esc(p["message"])}</div>')
    warnings = [w for w in p.get("warnings") or [] if w]
    if warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
        parts.append(f'<ul class="lora-trainer-warnings">{items}</ul>')
    if p.get("error"):
        error = '<div class="lora-trainer-error" role="alert"><span class="k">Error</span> '
        if p.get("error_field"):
            error += f'<span class="k">Setting</span> <code class="v">{_esc(p["error_field"])}</code> '
        parts.append(error + f'<span class="v">{_esc(p["error"])}</span></div>')
    if p.get("output_name") or p.get("files"):
        parts.append('<div class="lora-trainer-output">')
        if p.get("output_name"):
            parts.append(_kv("Output name", _esc(p["output_name"]), "output-name"))
        parts.append(_files_html(p.get("files"), p.get("file_kinds")) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def render_log_html(lines: list[str] | None) -> str:
    """The log tail, oldest line first (the stylesheet keeps the view scrolled to the newest)."""
    if not lines:
        return f'<pre class="lora-trainer-log lora-trainer-log-empty"><span>{NO_LOG_TEXT}</span></pre>'
    text = "\n".join(_esc(line) for line in lines)
    return f'<pre class="lora-trainer-log"><span class="lora-trainer-log-lines">{text}</span></pre>'


# ---------------------------------------------------------------- loss chart


def _nice_step(span: float, count: int = 4) -> float:
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude * 1.0001:
            return factor * magnitude
    return 10 * magnitude


def _ticks(lo: float, hi: float, integer: bool = False) -> list[float]:
    """3 to 5 round values inside [lo, hi] (whole numbers for the step axis)."""
    step = _nice_step(hi - lo)
    for _ in range(4):
        step = max(1.0, round(step)) if integer else step
        first = math.ceil(lo / step - 1e-9) * step
        ticks = [first + i * step for i in range(max(0, math.floor((hi - first) / step + 1e-9) + 1))]
        if len(ticks) >= 3 or (integer and step == 1):
            break
        step /= 2
    while len(ticks) > 5:
        ticks = ticks[::2]
    return ticks


def _tick_label(value: float, step: float) -> str:
    if abs(value) < step * 1e-6:
        value = 0.0
    if step >= 1 and abs(value) < 1e6:
        return f"{value:.0f}"
    if step < 1e-4 or abs(value) >= 1e6:
        return f"{value:.2e}"
    return f"{value:.{max(0, -math.floor(math.log10(step)) + 1)}f}".rstrip("0").rstrip(".")


def _downsample(points: list[tuple[float, float]], limit: int, envelope: bool) -> list[tuple[float, float]]:
    """At most `limit` points: per bucket its min and max (keeps spikes), or every n-th point."""
    if len(points) <= limit:
        return points
    if not envelope:
        stride = math.ceil(len(points) / (limit - 1))
        return [*points[:-1:stride], points[-1]]
    buckets = limit // 2
    out = []
    for i in range(buckets):
        chunk = points[i * len(points) // buckets : (i + 1) * len(points) // buckets]
        if chunk:
            low, high = min(chunk, key=lambda q: q[1]), max(chunk, key=lambda q: q[1])
            out.extend(sorted({low, high}))
    return out


def _svg_open(width: int, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lora-trainer-loss-chart" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" role="img" aria-label="{CHART_TITLE}" '
        f'font-family="sans-serif" font-size="11" fill="currentColor">'
        f'<text class="lora-trainer-chart-title" x="8" y="15" font-size="13" font-weight="bold">{CHART_TITLE}</text>'
    )


def render_loss_chart_svg(loss_history: list | None, width: int = 560, height: int = 180) -> str:
    """An inline SVG of the loss per step (thin, faint) and its smoothed value (thick); no scripts or assets."""
    raw: list[tuple[float, float]] = []
    smooth: list[tuple[float, float]] = []
    for item in loss_history or []:
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            continue
        x = _num(item[0])
        if x is None:
            continue
        if (y := _num(item[1])) is not None:
            raw.append((x, y))
        if len(item) > 2 and (y := _num(item[2])) is not None:
            smooth.append((x, y))
    if not raw and not smooth:
        return (
            _svg_open(width, height) + f'<text class="lora-trainer-chart-empty" x="{width / 2:.0f}" '
            f'y="{height / 2:.0f}" text-anchor="middle" fill-opacity="0.6">{CHART_EMPTY_TEXT}</text></svg>'
        )
    left, right, top, bottom = 52, 12, 24, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for x, _ in raw + smooth]
    ys = [y for _, y in raw + smooth]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 2:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 if y1 > y0 else max(abs(y0) * 0.1, 1e-3)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * plot_h

    out = [_svg_open(width, height), '<g class="lora-trainer-chart-axes" stroke="currentColor">']
    y_ticks, x_ticks = _ticks(y0, y1), _ticks(x0, x1, integer=True)
    y_step = (y_ticks[1] - y_ticks[0]) if len(y_ticks) > 1 else (y1 - y0)
    for t in y_ticks:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke-opacity="0.15"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" stroke="none">{_tick_label(t, y_step)}</text>'
        )
    for t in x_ticks:
        out.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke-opacity="0.5"/>'
            f'<text x="{sx(t):.1f}" y="{height - 6}" text-anchor="middle" stroke="none">{t:.0f}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke-opacity="0.5"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke-opacity="0.5"/></g>'
    )
    lines = (
        (raw, True, "lora-trainer-loss-raw", "currentColor", 'stroke-opacity="0.35" stroke-width="1"'),
        (smooth, False, "lora-trainer-loss-smooth", SMOOTH_COLOR, 'stroke-width="2"'),
    )
    for points, envelope, cls, color, style in lines:
        points = _downsample(sorted(points), MAX_CHART_POINTS, envelope)
        style = f'stroke="{color}" {style}'
        if len(points) == 1:
            x, y = points[0]
            out.append(
                f'<circle class="{cls}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}" {style}/>'
            )
        elif points:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
            out.append(
                f'<polyline class="{cls}" fill="none" {style} stroke-linejoin="round" points="{coords}"/>'
            )
    legend_x = width - right - 150
    out.append(
        f'<g class="lora-trainer-chart-legend"><line class="lora-trainer-loss-raw" x1="{legend_x}" '
        f'x2="{legend_x + 16}" y1="11" y2="11" stroke="currentColor" stroke-opacity="0.35"/>'
        f'<text x="{legend_x + 20}" y="15">{CHART_RAW_TEXT}</text><line class="lora-trainer-loss-smooth" '
        f'x1="{legend_x + 78}" x2="{legend_x + 94}" y1="11" y2="11" stroke="{SMOOTH_COLOR}" stroke-width="2"/>'
        f'<text x="{legend_x + 98}" y="15">{CHART_SMOOTH_TEXT}</text></g></svg>'
    )
    return "".join(out)


# ---------------------------------------------------------------- queue, history, choices, gallery


def _gpu_text(record: Any) -> str:
    mode = _get(record, "mode") or ""
    text = f'<span class="k">{GPU_MODE_LABELS.get(mode, _esc(mode))}</span>'
    if _get(record, "gpu"):
        text += f' <span class="v">({_esc(_get(record, "gpu"))})</span>'
    return text


def render_queue_html(records: list | None, now: float | None = None) -> str:
    """Running jobs on top, then the waiting ones in queue order; each row carries data-job."""
    records = list(records or [])
    active = [r for r in records if _get(r, "status") in ACTIVE]
    waiting = [r for r in records if _get(r, "status") == QUEUED]
    waiting.sort(key=lambda r: (_get(r, "position") is None, _get(r, "position") or 0))
    if not active and not waiting:
        return f'<div class="lora-trainer-queue"><p class="lora-trainer-empty">{NO_QUEUE_TEXT}</p></div>'
    rows = []
    for r in active:
        rows.append(
            f'<tr data-job="{_esc(_get(r, "id"))}" data-status="{_esc(_get(r, "status"))}">'
            f'<td class="lora-trainer-pos">{status_badge(_get(r, "status"))}</td>'
            f'<td class="lora-trainer-name">{_esc(_get(r, "name"))}</td>'
            f'<td class="lora-trainer-time">{format_time(_get(r, "started"), now)}</td><td>{_gpu_text(r)}</td></tr>'
        )
    for index, r in enumerate(waiting):
        rows.append(
            f'<tr data-job="{_esc(_get(r, "id"))}" data-status="{QUEUED}">'
            f'<td class="lora-trainer-pos">{index + 1}</td>'
            f'<td class="lora-trainer-name">{_esc(_get(r, "name"))}</td>'
            f'<td class="lora-trainer-time">{format_time(_get(r, "created"), now)}</td><td>{_gpu_text(r)}</td></tr>'
        )
    head = "<tr><th>#</th><th>Name</th><th>Time</th><th>GPU</th></tr>"
    table = f'<table class="lora-trainer-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
    empty = "" if waiting else f'<p class="lora-trainer-empty">{NO_QUEUE_TEXT}</p>'
    return f'<div class="lora-trainer-queue">{table}{empty}</div>'


def render_history_html(
    records: list | None,
    limit: int = 20,
    now: float | None = None,
    file_kinds: Mapping[str, str] | None = None,
) -> str:
    """Finished jobs, newest first: status, end time, duration, a short error, the files written (labelled
    by `file_kinds`, {path: kind}, when given)."""
    done = [r for r in records or [] if _get(r, "status") in FINISHED]
    done.sort(
        key=lambda r: (_num(_get(r, "finished")) or _num(_get(r, "created")) or 0, _get(r, "id") or ""),
        reverse=True,
    )
    if not done:
        return f'<div class="lora-trainer-history"><p class="lora-trainer-empty">{NO_HISTORY_TEXT}</p></div>'
    rows = []
    for r in done[: max(0, limit)]:
        status = _get(r, "status")
        started, finished = _num(_get(r, "started")), _num(_get(r, "finished"))
        duration = (
            format_duration(finished - started) if started is not None and finished is not None else DASH
        )
        details = ""
        if status == RESUMABLE:
            details += f'<span class="lora-trainer-note">{RESUMABLE_TEXT}</span>'
        error = str(_get(r, "error") or "")
        if error:
            short = error if len(error) <= 160 else error[:157].rstrip() + "…"
            details += f'<div class="lora-trainer-error-short" title="{_esc(error)}">{_esc(short)}</div>'
        details += _files_html(_get(r, "files"), file_kinds)
        rows.append(
            f'<tr data-job="{_esc(_get(r, "id"))}" data-status="{_esc(status)}">'
            f'<td class="lora-trainer-name">{_esc(_get(r, "name"))}</td><td>{status_badge(status)}</td>'
            f'<td class="lora-trainer-time">{format_time(finished, now)}</td>'
            f'<td class="lora-trainer-time">{duration}</td><td>{details}</td></tr>'
        )
    head = "<tr><th>Name</th><th>Status</th><th>Finished</th><th>Duration</th><th>Result</th></tr>"
    return (
        f'<div class="lora-trainer-history"><table class="lora-trainer-table"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def sample_caption(path: str) -> str:
    """ "epoch 3 · prompt 1" for the trainer's sample names, else the file name without its extension."""
    name = os.path.basename(str(path))
    match = _SAMPLE_NAME.search(name)
    if match:
        return SAMPLE_CAPTION.format(epoch=int(match.group(1)), prompt=int(match.group(2)) + 1)
    return os.path.splitext(name)[0]


def gallery_items(progress: dict | None, limit: int = 8) -> list[tuple[str, str]]:
    """(path, caption) of the newest sample images that still exist, newest first."""
    out: list[tuple[str, str]] = []
    seen = set()
    for path in reversed(list((progress or {}).get("samples") or [])):
        path = str(path)
        if len(out) >= limit:
            break
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        out.append((path, sample_caption(path)))
    return out
