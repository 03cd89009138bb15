"""Pipeline (NeMo Curator 1.x's ``nemo_curator.pipeline``): an ordered list of stages."""
from __future__ import annotations

import logging
from typing import Any

from nemo_aesthetic.backends.base import BaseExecutor
from nemo_aesthetic.stages.base import CompositeStage, ProcessingStage

logger = logging.getLogger("nemo_aesthetic")


class Pipeline:
    """``name``, ``description``, ``stages`` (more with :meth:`add_stage`) and a free-form
    ``config``. :meth:`run` runs on an executor: default :class:`DaskExecutor`; a
    ``distributed.Client`` is accepted too and runs on that client."""

    def __init__(self, name: str, description: str | None = None, stages: list[ProcessingStage] | None = None,
                 config: dict[str, Any] | None = None):
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage] = list(stages or [])
        self.config = dict(config or {})

    def add_stage(self, stage: ProcessingStage) -> "Pipeline":
        if not isinstance(stage, ProcessingStage):
            raise TypeError(f"Stage must be a ProcessingStage, got {type(stage)}")
        self.stages.append(stage)
        return self

    def build(self) -> None:
        """Check the pipeline can run: it has stages, and each score stage after an embedding
        stage fits its backbone (which also picks a LAION-Aesthetics V1 head), before any work."""
        if not self.stages:
            raise ValueError(f"Pipeline '{self.name}' has no stages")
        self.stages = decompose_stages(self.stages)
        backbone = None
        for stage in self.stages:
            if hasattr(stage, "backbone"):
                backbone = stage.backbone()
            elif backbone is not None and hasattr(stage, "follow_backbone"):
                stage.follow_backbone(*backbone)

    def describe(self) -> str:
        lines = [f"Pipeline: {self.name}"] + ([f"Description: {self.description}"] if self.description else [])
        lines += [f"Stages: {len(self.stages)}"]
        lines += [f"  {i + 1}. {s.name} ({type(s).__name__}): resources={s.resources}" for i, s in enumerate(self.stages)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, stages={[s.name for s in self.stages]})"

    def run(self, executor: BaseExecutor | None = None, initial_tasks: list | None = None) -> list:
        """The output tasks of the last stage, in partition order."""
        from nemo_aesthetic.backends.dask import DaskExecutor

        self.build()
        if not isinstance(executor, BaseExecutor):
            executor = DaskExecutor(config=self.config, client=executor)
        logger.info("pipeline %s: %s", self.name, " -> ".join(s.name for s in self.stages))
        return executor.execute(self.stages, initial_tasks)


def decompose_stages(stages: list[ProcessingStage]) -> list[ProcessingStage]:
    """Composite stages replaced by the stages they are made of (recursively)."""
    flat: list[ProcessingStage] = []
    for stage in stages:
        flat.extend(decompose_stages(stage.decompose()) if isinstance(stage, CompositeStage) else [stage])
    return flat
