"""Workflows (NeMo Curator 1.x's ``nemo_curator.pipeline.workflow``): several pipelines run as one
job, with their outputs and timings in a :class:`WorkflowRunResult`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkflowRunResult:
    """``pipeline_tasks``: each pipeline's output tasks by name; ``metadata``: timings and counts."""

    workflow_name: str
    pipeline_tasks: dict[str, list] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def add_pipeline_tasks(self, pipeline_name: str, tasks: list | None) -> None:
        self.pipeline_tasks[pipeline_name] = list(tasks or [])

    def extend_metadata(self, updates: dict[str, Any] | None = None) -> None:
        if updates:
            self.metadata.update(updates)

    def add_metadata(self, key: str, value: Any) -> None:
        self.metadata[key] = value

    def get_metadata(self, key: str) -> Any:
        return self.metadata.get(key)


class WorkflowBase(ABC):
    @abstractmethod
    def run(self, *args, **kwargs) -> WorkflowRunResult: ...
