"""Executors (NeMo Curator 1.x's ``nemo_curator.backends.base``): what runs a pipeline's stages."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeInfo:
    """The node a stage is set up on (``setup_on_node``)."""

    node_id: str = ""


@dataclass
class WorkerMetadata:
    """The worker a stage is set up on (``setup``)."""

    worker_id: str = ""
    allocation: Any = None
    extra: dict = field(default_factory=dict)


class BaseExecutor(ABC):
    """Runs ``stages`` over ``initial_tasks`` (None: the first stage makes them from an EmptyTask)."""

    def __init__(self, config: dict | None = None, ignore_head_node: bool = False):
        self.config = dict(config or {})
        self.ignore_head_node = ignore_head_node

    @abstractmethod
    def execute(self, stages: list, initial_tasks: list | None = None) -> list:
        """The output tasks of the last stage."""
