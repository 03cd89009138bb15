"""ProcessingStage: a named step turning tasks into tasks (NeMo Curator 1.x's contract).

Stages are dataclasses holding only their settings, so they pickle small; ``setup`` loads what
they need on the worker (models through ``load_object_on_worker``, once per worker process).
Beyond upstream, :meth:`ProcessingStage.process_stream` lets a stage hand out its outputs one at
a time and :meth:`ProcessingStage.process_tasks` chains the stages as generators: each batch goes
down the remaining stages before the next one is read, so a partition's memory is a few batches,
not one shard.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, Iterator

from nemo_aesthetic.stages.resources import Resources
from nemo_aesthetic.tasks import Task

#: The stage front logs here (per-image drop reasons, per-stage counts).
logger = logging.getLogger("nemo_aesthetic")


class ProcessingStage:
    """Base of the stages: ``process`` (one task -> a task, a list of tasks, or None)."""

    name = "ProcessingStage"
    resources = Resources(cpus=1.0)
    batch_size = 1
    runtime_env = None
    is_source_stage = False
    is_sink_stage = False

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        """Once per node (e.g. to download weights)."""

    def setup(self, worker_metadata=None) -> None:
        """Once per worker before processing (e.g. to load a model)."""

    def teardown(self) -> None:
        """After processing."""

    def process(self, task: Task) -> Task | list[Task] | None:
        raise NotImplementedError

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        results: list = []
        for task in tasks:
            result = self.process(task)
            results.extend(result if isinstance(result, list) else [result])
        return results

    def process_stream(self, task: Task) -> Iterator[Task]:
        """The outputs of ``process(task)`` one at a time (readers override it to stream)."""
        result = self.process(task)
        yield from (t for t in (result if isinstance(result, list) else [result]) if t is not None)

    def process_tasks(self, tasks: Iterable[Task]) -> Iterator[Task]:
        """The outputs for a stream of input tasks, in order, each numbered under its input (beyond
        upstream). The executor chains the stages through this; a stage that gains from seeing
        past one task (the embedding stage keeps its decoder busy across batches) overrides it."""
        for task in tasks:
            for i, out in enumerate(self.process_stream(task)):
                out._set_task_id(task.task_id, i)
                yield out

    def supports_batch_processing(self) -> bool:
        return type(self).process_batch is not ProcessingStage.process_batch

    def num_workers(self) -> int | None:
        return None

    def xenna_stage_spec(self) -> dict[str, Any]:
        return {}

    def ray_stage_spec(self) -> dict[str, Any]:
        return {}

    def with_(self, name: str | None = None, resources: Resources | None = None, batch_size: int | None = None,
              **_backend_specific) -> "ProcessingStage":
        """A copy with ``name``/``resources``/``batch_size`` replaced (backend specs are accepted and unused)."""
        new = copy.deepcopy(self)
        for attr, value in (("name", name), ("resources", resources), ("batch_size", batch_size)):
            if value is not None:
                setattr(new, attr, value)
        return new

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "resources": self.resources, "batch_size": self.batch_size,
                "supports_batch_processing": self.supports_batch_processing()}

    def _gpu_resources(self, num_gpus_per_worker: float) -> Resources:
        """Upstream's rule: a GPU share only where CUDA is available."""
        import torch

        return Resources(gpus=num_gpus_per_worker) if torch.cuda.is_available() else Resources()

    def __repr__(self) -> str:
        return type(self).__name__


class CompositeStage(ProcessingStage):
    """A stage made of other stages (NeMo Curator 1.x's ``CompositeStage``): the pipeline runs
    what :meth:`decompose` returns in its place."""

    def decompose(self) -> list[ProcessingStage]:
        raise NotImplementedError

    def process(self, task: Task):
        raise RuntimeError(f"{type(self).__name__} is a composite stage: the pipeline runs its decompose()")
