"""Per-sample predictions as JSON lines, appended durably so an interrupted evaluation resumes.

One process appends to ``{task}.jsonl``. Under ``accelerate launch`` rank r appends to its own shard,
``{task}.rank{r}.jsonl`` (so ranks never write one file), and the coordinator merges every shard into
``{task}.jsonl`` once all ranks are done. A sample counts as done when it is in any of these files, so a rerun
after a crash of any rank (with any number of processes) generates only what is missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fast3d_cli.data.formats import write_text_atomic
from fast3d_cli.errors import naming_os_errors


class PredictionLog:
    """``{task}.jsonl``: one record per finished sample. A torn last line (crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def shard(self, rank: int) -> PredictionLog:
        """The log rank ``rank`` appends to under ``accelerate launch``."""
        return PredictionLog(self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}"))

    def shards(self) -> list[PredictionLog]:
        """The rank logs present next to this one (left by a run not yet merged, or killed)."""
        pattern = f"{self.path.stem}.rank*{self.path.suffix}"
        return [PredictionLog(p) for p in sorted(self.path.parent.glob(pattern))]

    def read_all(self) -> dict[int, dict[str, Any]]:
        """The records of this log and of every rank log beside it, by sample index."""
        records: dict[int, dict[str, Any]] = {}
        for log in (*self.shards(), self):
            records.update(log.read())
        return records

    def merge_shards(self, order: Sequence[int]) -> None:
        """Coordinator only: rewrite this log atomically with every record of the rank logs, in ``order``
        (the task's sample indices; the order of a one-process run), then remove the rank logs."""
        shards = self.shards()
        if not shards:
            return
        records = self.read_all()
        position = {index: rank for rank, index in enumerate(order)}
        ordered = sorted(records, key=lambda index: (position.get(index, len(position)), index))
        write_text_atomic(self.path, "".join(json.dumps(records[i], sort_keys=True) + "\n" for i in ordered))
        for shard in shards:
            shard.path.unlink(missing_ok=True)

    def read(self) -> dict[int, dict[str, Any]]:
        """The records by sample index (of a sample written twice, the last)."""
        return {int(record["index"]): record for record in self.records()}

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in file order."""
        if not self.path.is_file():
            return []
        records = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn write of the last record
                records.append(json.loads(line))
        return records

    def duplicates(self) -> list[int]:
        """The sample indices recorded more than once in this file (two writers at once), sorted."""
        counts = Counter(int(record["index"]) for record in self.records())
        return sorted(index for index, count in counts.items() if count > 1)

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
