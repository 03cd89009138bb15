"""Task: the unit of work that flows between stages (NeMo Curator 1.x's ``nemo_curator.tasks.tasks``)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Task(ABC, Generic[T]):
    """A batch of data of one dataset.

    Attributes:
        dataset_name: the dataset the task belongs to.
        data: the payload (a list of files, of images, ...).
        _stage_perf: per-stage performance records (kept for upstream compatibility).
        _metadata: free-form metadata carried along.
        task_id: set by the pipeline (``"<parent id>_<index>"``), not by stages.
    """

    dataset_name: str
    data: T
    _stage_perf: list = field(default_factory=list)
    _metadata: dict[str, Any] = field(default_factory=dict)
    task_id: str = field(init=False, default="")
    _source_id: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.validate()

    @property
    @abstractmethod
    def num_items(self) -> int:
        """Number of items in this task."""

    def add_stage_perf(self, perf_stats) -> None:
        self._stage_perf.append(perf_stats)

    def _set_task_id(self, parent_task_id: str, current_task_id_suffix: str | int) -> None:
        self.task_id = f"{parent_task_id}_{current_task_id_suffix}" if parent_task_id else str(current_task_id_suffix)

    def get_deterministic_id(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id}, dataset_name={self.dataset_name})"

    @abstractmethod
    def validate(self) -> bool:
        """Validate the task data."""


@dataclass
class _EmptyTask(Task[None]):
    """What a pipeline's first stage receives."""

    @property
    def num_items(self) -> int:
        return 0

    def validate(self) -> bool:
        return True

    def __call__(self, dataset_name: str = "empty", data=None) -> "_EmptyTask":
        """``EmptyTask(...)`` makes a new one, as upstream's ``EmptyTask`` class does (1.3.0)."""
        return _EmptyTask(dataset_name=dataset_name, data=data)


EmptyTask = _EmptyTask(dataset_name="empty", data=None)
