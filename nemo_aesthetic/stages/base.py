"""What every stage is: a named step turning tasks into tasks.

Stages are thin adapters over the library's core (tar reading, decoding, the embedder's model
loading and forward pass, the classifiers' scorers); they hold only their settings, so they
pickle small. Expensive state (models) is loaded on the worker through
:func:`nemo_aesthetic.distributed.load_object_on_worker`, once per worker process.

A *source* stage (``is_source = True``) runs on the client and makes the first tasks out of an
:class:`~nemo_aesthetic.stages.tasks.EmptyTask`; every later stage runs on a Dask worker, all of
them in sequence inside the one Dask task of each partition.
"""
from __future__ import annotations

import logging
from typing import Sequence

from nemo_aesthetic.stages.tasks import Task

#: The stage front logs here (per-image drop reasons, per-stage counts).
logger = logging.getLogger("nemo_aesthetic")


class ProcessingStage:
    """Base class of the stages.

    Attributes:
        name: shown in logs.
        num_gpus_per_worker: the share of a GPU one partition's task needs. On a cluster whose
            workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``, or
            ``dask cuda worker --resources GPU=1``) the pipeline submits each partition with
            ``resources={"GPU": x}`` (x = the largest value among its stages), so at most
            ``1/x`` partitions run per GPU at once. On CPU clusters, and on GPU clusters that
            advertise no ``GPU`` resource, it is ignored.
        is_source: True for a stage that creates tasks on the client.
        verbose: log per-task details at INFO (else DEBUG).
    """

    name: str = "stage"
    is_source: bool = False
    num_gpus_per_worker: float = 0.0
    verbose: bool = False

    def process(self, task: Task) -> Task | list[Task] | None:
        raise NotImplementedError

    def process_batch(self, tasks: Sequence[Task]) -> list[Task]:
        """All tasks of one partition; by default :meth:`process` on each, results flattened."""
        out: list[Task] = []
        for task in tasks:
            result = self.process(task)
            if result is None:
                continue
            if isinstance(result, list):
                out.extend(result)
            else:
                out.append(result)
        return out

    def _log(self, msg: str, *args) -> None:
        logger.log(logging.INFO if self.verbose else logging.DEBUG, f"{self.name}: {msg}", *args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
