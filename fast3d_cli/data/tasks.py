"""Task registry: which annotation file each Chat-Scene task reads (spec §2.1)."""

from __future__ import annotations

from dataclasses import dataclass

from fast3d_cli.errors import UserError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class TaskSpec:
    """One Chat-Scene task: its annotation file name pattern and how its answers look."""

    name: str
    annotation_pattern: str  # formatted with split=
    grounding: bool  # answers contain <OBJnnn> identifiers of proposals
    type_field: str | None = None  # annotation field copied into a prediction's type_info

    def annotation_file(self, split: str) -> str:
        return self.annotation_pattern.format(split=split)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("scanrefer", "scanrefer_mask3d_{split}.json", grounding=True),
        TaskSpec("multi3dref", "multi3dref_mask3d_{split}.json", grounding=True, type_field="eval_type"),
        TaskSpec("scan2cap", "scan2cap_mask3d_{split}.json", grounding=False),
        TaskSpec("scanqa", "scanqa_{split}.json", grounding=False),
        TaskSpec("sqa3d", "sqa3d_{split}.json", grounding=False, type_field="sqa_type"),
    )
}


# Training-only data with no evaluation metric. Chat-Scene also trains on object-alignment data (obj_align).
AUXILIARY_TASKS: dict[str, TaskSpec] = {
    "obj_align": TaskSpec("obj_align", "obj_align_mask3d_{split}.json", grounding=False),
}


def get_task(name: str) -> TaskSpec:
    spec = TASKS.get(name) or AUXILIARY_TASKS.get(name)
    if spec is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return spec


def parse_tasks(text: str | None) -> list[str]:
    """Parse a comma-separated task list ("all" or empty means every task), validating each name."""
    if not text or text.strip() == "all":
        return list(TASKS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in TASKS:
            raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def parse_splits(text: str | None, default: str = "val") -> list[str]:
    names = [part.strip() for part in (text or default).split(",") if part.strip()]
    for name in names:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    return list(dict.fromkeys(names))
