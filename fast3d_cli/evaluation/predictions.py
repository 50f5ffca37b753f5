"""Per-sample predictions as JSON lines, appended durably so an interrupted evaluation resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fast3d_cli.errors import naming_os_errors


class PredictionLog:
    """``{task}.jsonl``: one record per finished sample. A torn last line (crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn write of the last record
                record = json.loads(line)
                records[int(record["index"])] = record
        return records

    def repair(self) -> None:
        """Drop a torn final line so new records start on a fresh line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as handle:
                handle.truncate(len(keep))

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with naming_os_errors(self.path), self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
