"""Data layer: Chat-Scene annotation, feature and attribute formats (spec §2)."""

from fast3d_cli.data.config import DataConfig
from fast3d_cli.data.dataset import Sample, SceneBank, load_samples
from fast3d_cli.data.tasks import SPLITS, TASKS, TaskSpec, get_task, parse_tasks

__all__ = [
    "SPLITS",
    "TASKS",
    "DataConfig",
    "Sample",
    "SceneBank",
    "TaskSpec",
    "get_task",
    "load_samples",
    "parse_tasks",
]
