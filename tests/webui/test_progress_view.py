"""The Train tab's HTML views and its polling script, fed by a real JobManager that follows a small replay
trainer (it writes events through the trainer's own EventWriter), so the dicts are the ones the tab gets."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lib_trainer.jobs import DONE, FAILED, QUEUED, RESUMABLE, RUNNING, JobManager, JobRecord
from lib_trainer.webui import progress_view as pv

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "javascript" / "lora_trainer.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not on PATH; the polling script is not checked")

# Emits the "before" events, waits for JOB_DIR/go, emits the "after" events and exits with "exit_code".
REPLAY = r"""
import json, sys, time
from pathlib import Path
from lib_trainer.train.events import EventWriter

job = Path(sys.argv[1])
plan = json.loads((job / "replay.json").read_text(encoding="utf-8"))
writer = EventWriter(job / "events.jsonl", log_path=job / "log")
for event in plan.get("before", []):
    writer.emit(event.pop("type"), **event)
deadline = time.time() + 60
while not (job / "go").exists() and time.time() < deadline:
    time.sleep(0.01)
for event in plan.get("after", []):
    writer.emit(event.pop("type"), **event)
writer.close()
sys.exit(plan.get("exit_code", 0))
"""


class Replay:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.script = tmp_path / "replay.py"
        self.script.write_text(REPLAY, encoding="utf-8")
        self.manager = JobManager(tmp_path / "jobs", trainer_command=self.command)
        self.jobs: list[str] = []

    def command(self, job_dir: Path, resume: bool) -> list[str]:
        return [sys.executable, str(self.script), str(job_dir)]

    def submit(self, name: str, before=(), after=(), exit_code: int = 0) -> str:
        spec = {
            "spec_version": 1,
            "name": name,
            "model": {"checkpoint": str(self.tmp / "model.safetensors")},
            "dataset": {"path": str(self.tmp / "data")},
            "output": {"dir": str(self.tmp / "loras")},
        }
        record = self.manager.submit(spec)
        plan = {"before": list(before), "after": list(after), "exit_code": exit_code}
        (Path(record.job_dir) / "replay.json").write_text(json.dumps(plan), encoding="utf-8")
        self.jobs.append(record.id)
        return record.id

    def go(self, job_id: str) -> None:
        (Path(self.manager.get(job_id).job_dir) / "go").write_text("go", encoding="utf-8")

    def wait(self, condition, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.manager.poll()
            result = condition()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError("condition not met in time")

    def cleanup(self) -> None:
        for job_id in self.jobs:
            self.go(job_id)
        for proc in list(self.manager._procs.values()):
            proc.signal(hard=True)


@pytest.fixture
def replay(tmp_path):
    setup = Replay(tmp_path)
    yield setup
    setup.cleanup()


def plan_events(tmp_path: Path) -> list[dict]:
    out = tmp_path / "loras"
    return [
        {"type": "start", "name": "mychar", "resume": False, "model": "m", "model_type": "sd1",
         "prediction_type": "epsilon", "device": "cpu"},
        {"type": "info", "message": "training 10 steps", "total_steps": 10, "total_epochs": 2,
         "steps_per_epoch": 5, "output_name": "mychar"},
        {"type": "warning", "message": "<b>captions</b> are long"},
        *[{"type": "progress", "step": s, "total_steps": 10, "epoch": 1, "total_epochs": 2, "loss": 0.5 / s,
           "smoothed_loss": 0.4, "lr": 1e-4, "it_per_s": 2.5, "eta_s": 200.0} for s in range(1, 5)],
        {"type": "checkpoint", "path": str(out / "mychar-000001.safetensors"), "epoch": 1, "step": 4},
    ]  # fmt: skip


def xml(text: str) -> ET.Element:
    """Our HTML is also well-formed XML: this checks that every tag is closed and every value escaped."""
    return ET.fromstring(text)


def stat(root: ET.Element, cls: str) -> str:
    found = root.find(f".//*[@class='lora-trainer-stat lora-trainer-{cls}']")
    assert found is not None, cls
    return " ".join("".join(found.itertext()).split())


# ---------------------------------------------------------------- progress panel


def test_idle_panel():
    html = pv.render_progress_html(None)
    assert pv.IDLE_TEXT in html and 'data-status="idle"' in html
    xml(html)


def test_running_queued_and_done_progress(replay, tmp_path):
    first = replay.submit("mychar", before=plan_events(tmp_path), after=[
        {"type": "done", "files": [str(tmp_path / "loras" / "mychar.safetensors"),
                                   str(tmp_path / "loras" / "mychar.json")], "output_name": "mychar", "steps": 10},
    ])  # fmt: skip
    second = replay.submit("second")
    replay.wait(lambda: replay.manager.progress(first)["step"] == 4)
    progress = replay.manager.progress(first)
    assert progress["status"] == RUNNING

    root = xml(pv.render_progress_html(progress))
    assert root.get("data-status") == RUNNING and root.get("data-job") == first
    assert root.find(".//*[@class='lora-trainer-badge']").text == pv.STATUS_LABELS[RUNNING]
    assert stat(root, "step") == "Step 4 / 10 (40%)"
    assert stat(root, "epoch") == "Epoch 1 / 2"
    assert stat(root, "loss") == "Loss 0.1250" and stat(root, "avg") == "avg 0.4000"
    assert stat(root, "speed") == "2.50 it/s"
    assert stat(root, "eta") == "ETA 3 min 20 s"
    assert stat(root, "elapsed").startswith("Elapsed ")
    assert root.find(".//*[@class='lora-trainer-bar-fill']").get("style") == "width: 40.0%"
    assert root.find(".//*[@class='lora-trainer-message']").text == "training 10 steps"
    assert [li.text for li in root.find(".//ul[@class='lora-trainer-warnings']")] == [
        "<b>captions</b> are long"
    ]
    files = root.findall(".//*[@class='lora-trainer-file']")
    assert [f.text for f in files] == ["mychar-000001.safetensors"]
    assert files[0].get("title") == str(tmp_path / "loras")
    assert files[0].get("data-lora-trainer-copy") == str(tmp_path / "loras" / "mychar-000001.safetensors")

    waiting = xml(pv.render_progress_html(replay.manager.progress(second)))
    assert waiting.get("data-status") == QUEUED
    assert stat(waiting, "position") == "Place in queue 1"
    assert stat(waiting, "step") == "Step — / —"
    assert waiting.find(".//*[@class='lora-trainer-stat lora-trainer-eta']") is None

    chart = xml(pv.render_loss_chart_svg(progress["loss_history"]))
    assert len(chart.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2

    replay.go(first)
    replay.wait(lambda: replay.manager.get(first).status == DONE)
    done = xml(pv.render_progress_html(replay.manager.progress(first)))
    assert done.get("data-status") == DONE
    assert done.find(".//*[@class='lora-trainer-bar-fill']").get("style") == "width: 100.0%"
    assert done.find(".//*[@class='lora-trainer-stat lora-trainer-eta']") is None
    names = [f.text for f in done.findall(".//*[@class='lora-trainer-file']")]
    assert names == ["mychar-000001.safetensors", "mychar.safetensors", "mychar.json"]
    assert stat(done, "output-name") == "Output name mychar"


def test_failed_job_error_is_escaped(replay, tmp_path):
    error = {"type": "error", "message": "<script>alert(1)</script> & more", "field": "training.learning_rate",
             "kind": "input"}  # fmt: skip
    job = replay.submit("broken", before=[error], exit_code=2)
    replay.go(job)
    replay.wait(lambda: replay.manager.get(job).status == FAILED)
    progress = replay.manager.progress(job)
    progress["name"] = '<script>alert("name")</script>'
    html = pv.render_progress_html(progress)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    root = xml(html)
    assert root.find(".//*[@class='lora-trainer-name']").text == '<script>alert("name")</script>'
    box = root.find(".//*[@class='lora-trainer-error']")
    assert box.get("role") == "alert" and box.find("code").text == "training.learning_rate"
    assert "<script>alert(1)</script> & more" in "".join(box.itertext())
    assert root.find(".//*[@class='lora-trainer-badge']").get("data-status") == FAILED


def test_progress_with_every_key_missing_or_odd():
    xml(pv.render_progress_html({"id": "x"}))
    odd = {key: None for key in ("status", "step", "total_steps", "loss", "eta_s", "warnings", "files")}
    xml(pv.render_progress_html({"id": "x", "name": "n", **odd}))
    nan = {"id": "x", "status": RUNNING, "step": 3, "total_steps": 0, "loss": float("nan"),
           "it_per_s": 0.25, "eta_s": float("inf"), "started": time.time() - 65}  # fmt: skip
    root = xml(pv.render_progress_html(nan))
    assert root.find(".//*[@class='lora-trainer-stat lora-trainer-loss']") is None
    assert stat(root, "speed") == "4.0 s/it" and stat(root, "eta") == "ETA —"
    assert stat(root, "elapsed") in ("Elapsed 1 min 05 s", "Elapsed 1 min 06 s")
    resumable = xml(pv.render_progress_html({"id": "x", "status": RESUMABLE, "resumable": True}))
    assert resumable.find(".//*[@class='lora-trainer-note']").text == pv.RESUMABLE_TEXT


def test_log_html_escapes_and_keeps_order():
    html = pv.render_log_html(["first <b>", "second & last"])
    assert html.startswith('<pre class="lora-trainer-log">')
    assert "first &lt;b&gt;\nsecond &amp; last" in html
    assert pv.NO_LOG_TEXT in pv.render_log_html([])


# ---------------------------------------------------------------- loss chart

SVG = "{http://www.w3.org/2000/svg}"


def lines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = xml(svg)
    assert root.tag == f"{SVG}svg" and root.get("viewBox") == "0 0 560 180"
    assert root.find(f"{SVG}text").text == pv.CHART_TITLE
    out = {}
    for poly in root.iter(f"{SVG}polyline"):
        points = [tuple(float(v) for v in p.split(",")) for p in poly.get("points").split()]
        assert all(math.isfinite(x) and math.isfinite(y) for x, y in points)
        assert all(0 <= x <= 560 and 0 <= y <= 180 for x, y in points)
        out[poly.get("class")] = points
    return out


def axis_labels(svg: str) -> tuple[list[str], list[str]]:
    axes = xml(svg).find(f".//{SVG}g[@class='lora-trainer-chart-axes']")
    texts = axes.findall(f"{SVG}text")
    return [t.text for t in texts if t.get("text-anchor") == "end"], [
        t.text for t in texts if t.get("text-anchor") == "middle"
    ]


def test_chart_empty_and_all_invalid():
    for history in ([], None, [[1, float("nan"), float("inf")]], [["x", 1, 1]]):
        svg = pv.render_loss_chart_svg(history)
        assert pv.CHART_EMPTY_TEXT in svg and "polyline" not in svg
        xml(svg)


def test_chart_lines_ticks_and_nan():
    history = [[s, 1.0 / s, 0.8 / s] for s in range(1, 101)]
    history[10][1] = float("nan")
    history[20][2] = float("inf")
    svg = pv.render_loss_chart_svg(history)
    got = lines(svg)
    assert len(got["lora-trainer-loss-raw"]) == 99 and len(got["lora-trainer-loss-smooth"]) == 99
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    y_labels, x_labels = axis_labels(svg)
    assert 3 <= len(y_labels) <= 5 and 3 <= len(x_labels) <= 5
    assert all(label.isdigit() for label in x_labels)
    # larger loss is drawn higher up (smaller y)
    raw = got["lora-trainer-loss-raw"]
    assert raw[0][1] < raw[-1][1]


def test_chart_single_point_and_constant():
    single = pv.render_loss_chart_svg([[7, 0.3, 0.3]])
    root = xml(single)
    assert len(root.findall(f".//{SVG}circle")) == 2
    y_labels, x_labels = axis_labels(single)
    assert 3 <= len(y_labels) <= 5 and "7" in x_labels
    flat = lines(pv.render_loss_chart_svg([[s, 0.25, 0.25] for s in range(1, 50)]))
    assert len({y for _, y in flat["lora-trainer-loss-smooth"]}) == 1
    zero = pv.render_loss_chart_svg([[s, 0.0, 0.0] for s in range(1, 5)])
    assert 3 <= len(axis_labels(zero)[0]) <= 5


def test_chart_downsamples_many_points_and_keeps_spikes():
    history = [[s, 0.1 + (0.9 if s == 5000 else 0.0), 0.1] for s in range(1, 10001)]
    got = lines(pv.render_loss_chart_svg(history))
    raw, smooth = got["lora-trainer-loss-raw"], got["lora-trainer-loss-smooth"]
    assert len(raw) <= pv.MAX_CHART_POINTS and len(smooth) <= pv.MAX_CHART_POINTS
    assert min(y for _, y in raw) < min(y for _, y in smooth)  # the spike survived thinning
    assert smooth[-1][0] == max(x for x, _ in smooth)  # the last step is still drawn


# ---------------------------------------------------------------- queue, history, choices


def record(job_id: str, status: str, **fields) -> JobRecord:
    return JobRecord(
        id=job_id, name=fields.pop("name", job_id), job_dir=f"/jobs/{job_id}", status=status, **fields
    )


def test_queue_running_first_then_waiting_in_order(replay):
    first, second, third = (replay.submit(n) for n in ("one", "two", "three"))
    replay.wait(lambda: replay.manager.get(first).status == RUNNING)
    replay.manager.move(third, 0)
    html = pv.render_queue_html(replay.manager.list())
    root = xml(html)
    rows = root.findall(".//tbody/tr")
    assert [r.get("data-job") for r in rows] == [first, third, second]
    assert [r.find("td").text for r in rows[1:]] == ["1", "2"]
    assert rows[0].find(".//*[@class='lora-trainer-badge']").get("data-status") == RUNNING
    assert pv.NO_QUEUE_TEXT not in html
    assert "Exclusive GPU" in html
    assert pv.NO_QUEUE_TEXT in pv.render_queue_html([])
    only_running = pv.render_queue_html([record("r", RUNNING, started=time.time())])
    assert pv.NO_QUEUE_TEXT in only_running and 'data-job="r"' in only_running


def test_history_newest_first_with_errors_files_and_resumable():
    now = time.time()
    records = [
        record("old", DONE, started=now - 4000, finished=now - 3000, files=["/out/a/old.safetensors"]),
        record("new", FAILED, started=now - 200, finished=now - 80, error="<b>boom</b> " + "x" * 300),
        record("mid", RESUMABLE, started=now - 900, finished=now - 500),
        record("wait", QUEUED, created=now),
    ]
    root = xml(pv.render_history_html(records))
    rows = root.findall(".//tbody/tr")
    assert [r.get("data-job") for r in rows] == ["new", "mid", "old"]
    cells = rows[0].findall("td")
    assert cells[3].text == "2 min 00 s"
    short = rows[0].find(".//*[@class='lora-trainer-error-short']")
    assert short.text.startswith("<b>boom</b>") and short.text.endswith("…") and len(short.text) <= 160
    assert short.get("title").endswith("x" * 300)
    assert rows[1].find(".//*[@class='lora-trainer-note']").text == pv.RESUMABLE_TEXT
    file = rows[2].find(".//*[@class='lora-trainer-file']")
    assert file.text == "old.safetensors" and file.get("title") == "/out/a"
    assert len(xml(pv.render_history_html(records, limit=1)).findall(".//tbody/tr")) == 1
    assert pv.NO_HISTORY_TEXT in pv.render_history_html([record("wait", QUEUED)])
    assert pv.render_history_html([r.to_dict() for r in records]).count("data-job=") == 3  # dicts work too


def test_checkpoints_and_loras_are_labelled_as_what_they_are():
    """A full fine-tune's model file is a checkpoint, never called a LoRA; other files get no label."""
    files = ["/sd/hero-000001.safetensors", "/sd/hero.safetensors", "/lora/hero.safetensors", "/sd/hero.png"]
    kinds = {files[0]: "checkpoint", files[1]: "checkpoint", files[2]: "lora", files[3]: "other"}
    progress = {
        "id": "j",
        "name": "hero",
        "status": DONE,
        "output_name": "hero",
        "files": files,
        "file_kinds": kinds,
    }
    items = xml(pv.render_progress_html(progress)).findall(".//ul[@class='lora-trainer-files']/li")
    labels = [(li.get("data-kind"), li.find("span[@class='k']")) for li in items]
    assert [(kind, k.text if k is not None else None) for kind, k in labels] == [
        ("checkpoint", "Checkpoint"),
        ("checkpoint", "Checkpoint"),
        ("lora", "LoRA"),
        (None, None),
    ]
    history = xml(pv.render_history_html([record("j", DONE, files=files)], file_kinds=kinds))
    assert [k.text for k in history.findall(".//li/span[@class='k']")] == ["Checkpoint", "Checkpoint", "LoRA"]
    plain = xml(pv.render_history_html([record("j", DONE, files=files)]))  # no kinds known: no labels
    assert plain.findall(".//li/span[@class='k']") == []


def test_gallery_existing_files_newest_first(tmp_path):
    paths = [tmp_path / f"mychar_e{e:06d}_{i:02d}.png" for e in (1, 2, 3) for i in (0, 1)]
    for path in paths:
        path.write_bytes(b"png")
    paths[5].unlink()  # epoch 3, prompt 2 is gone
    other = tmp_path / "custom.png"
    other.write_bytes(b"png")
    progress = {"samples": [str(p) for p in paths] + [str(other), str(tmp_path / "missing.png")]}
    items = pv.gallery_items(progress, limit=4)
    assert items == [
        (str(other), "custom"),
        (str(paths[4]), "epoch 3 · prompt 1"),
        (str(paths[3]), "epoch 2 · prompt 2"),
        (str(paths[2]), "epoch 2 · prompt 1"),
    ]
    assert pv.gallery_items(None) == [] and pv.gallery_items({"samples": None}) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (-1, "—"),
        (float("nan"), "—"),
        (float("inf"), "—"),
        (0, "0 s"),
        (12.4, "12 s"),
        (59.6, "1 min 00 s"),
        (200, "3 min 20 s"),
        (3900, "1 h 05 min"),
        (90061, "25 h 01 min"),
    ],
)
def test_format_duration(seconds, text):
    assert pv.format_duration(seconds) == text


def test_format_time_today_and_other_days():
    now = time.mktime((2026, 3, 4, 15, 30, 0, 0, 0, -1))
    assert pv.format_time(now - 3600, now=now) == "14:30"
    assert pv.format_time(now - 86400 * 2, now=now) == "2026-03-02 15:30"
    assert pv.format_time(None) == "—"


def test_no_gradio_or_torch_import():
    code = (
        "import sys, lib_trainer.webui.progress_view; print('torch' in sys.modules, 'gradio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- javascript/lora_trainer.js

# A tiny fake DOM: enough for the script to run its timer, not a browser. `tab` says whether the tab exists
# and is shown, `status` what the progress panel says; the result lists how often the poll button was clicked.
NODE_HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
const [file, scenario] = [process.argv[1], JSON.parse(process.argv[2])];
let clicks = 0, timers = [], listeners = {};
const button = {tagName: "BUTTON", disabled: false, click() { clicks++; }};
const panel = {getAttribute: (name) => (name === "data-status" ? scenario.status : null)};
const tab = {offsetParent: scenario.tab === "shown" ? {} : null, getClientRects: () => []};
const document = {
  visibilityState: "visible", readyState: "complete",
  addEventListener(type, fn) { listeners[type] = fn; },
  querySelector(sel) {
    if (!scenario.tab) return null;
    if (sel === "#tab_lora_trainer") return tab;
    if (sel === "#lora_trainer_poll") return button;
    if (sel === "#lora_trainer_progress .lora-trainer-progress") return scenario.status ? panel : null;
    return null;
  },
};
let now = 1000000;
const context = {
  document, navigator: {}, console,
  Date: {now: () => now},
  setInterval(fn, ms) { timers.push(fn); return timers.length; },
  setTimeout(fn) { return 0; },
};
context.window = context;
if (scenario.onUiLoaded) context.onUiLoaded = (fn) => fn();
vm.createContext(context);
vm.runInContext(fs.readFileSync(file, "utf8"), context, {filename: file});
const globals = Object.keys(context).filter((k) => !["document", "navigator", "console", "Date",
  "setInterval", "setTimeout", "window", "onUiLoaded"].includes(k));
const polled = context.window.loraTrainer.pollNow();
const afterPollNow = clicks;
for (let t = 0; t < scenario.seconds * 2; t++) { now += 500; timers.forEach((fn) => fn()); }
console.log(JSON.stringify({clicks, afterPollNow, polled, globals, timers: timers.length,
                            listeners: Object.keys(listeners).sort()}));
"""


def run_script(**scenario) -> dict:
    scenario = {"tab": None, "status": None, "seconds": 20, "onUiLoaded": True, **scenario}
    out = subprocess.run(
        [NODE, "-e", NODE_HARNESS, str(SCRIPT), json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_node
def test_script_parses():
    out = subprocess.run([NODE, "--check", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@needs_node
@pytest.mark.parametrize("on_ui_loaded", [True, False])
def test_script_without_the_tab_does_nothing(on_ui_loaded):
    result = run_script(onUiLoaded=on_ui_loaded)
    assert result["clicks"] == 0 and result["polled"] is False
    assert result["globals"] == ["loraTrainer"] and result["timers"] == 1
    assert result["listeners"] == ["click", "visibilitychange"]


@needs_node
def test_script_polls_by_status_only_while_the_tab_is_shown():
    assert run_script(tab="hidden", status="running")["clicks"] == 1  # only the explicit pollNow()
    running = run_script(tab="shown", status="running")
    assert running["afterPollNow"] == 1 and 19 <= running["clicks"] - 1 <= 21  # every second for 20 s
    done = run_script(tab="shown", status="done")
    assert 2 <= done["clicks"] - 1 <= 4  # at once when the tab appears, then every 10 s
    waiting = run_script(tab="shown", status="queued")
    assert 9 <= waiting["clicks"] - 1 <= 11  # every 2 s


def test_stylesheet_is_scoped():
    css = (REPO / "style.css").read_text(encoding="utf-8")
    body = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    for block in body.split("}"):
        if "{" not in block:
            continue
        for selector in block.split("{")[0].split(","):
            selector = selector.strip()
            assert selector.startswith(("#tab_lora_trainer", "#lora_trainer_", ".lora-trainer-")), selector
    assert "#lora_trainer_poll" in css
