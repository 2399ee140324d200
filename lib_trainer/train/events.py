"""The job's event stream: one JSON object per line in events.jsonl, readable while it is being written.

The WebUI, the REST API and tests follow a job only through this file (and the log), so each line is
written whole and flushed at once, and carries a sequence number so a reader can ask for "events after N".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENT_TYPES = ("start", "progress", "sample", "checkpoint", "warning", "error", "done", "info", "cancelled")


class EventWriter:
    def __init__(self, path: Path, echo=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = self._last_seq()
        self._file = self.path.open("a", encoding="utf-8")
        self._echo = echo

    def _last_seq(self) -> int:
        if not self.path.is_file():
            return 0
        last = 0
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    last = int(json.loads(line).get("seq", last))
                except (ValueError, AttributeError):
                    continue
        return last

    def emit(self, type_: str, **fields: Any) -> dict:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_}")
        self._seq += 1
        event = {"seq": self._seq, "time": round(time.time(), 3), "type": type_, **fields}
        self._file.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno()) if type_ in ("done", "error", "cancelled") else None
        if self._echo is not None:
            self._echo(event)
        return event

    def close(self) -> None:
        self._file.close()


def read_events(path: Path, since: int = 0) -> list[dict]:
    """Events with seq > since; a half-written last line (writer mid-flush) is skipped, not an error."""
    events = []
    if not Path(path).is_file():
        return events
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("seq", 0) > since:
                events.append(event)
    return events
