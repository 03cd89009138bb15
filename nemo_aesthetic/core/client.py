"""RayClient under NeMo Curator 1.x's name: a documented no-op.

NeMo Curator 1.x starts a Ray cluster with ``RayClient().start()`` before running a pipeline.
Here pipelines run on Dask (:class:`~nemo_aesthetic.backends.dask.DaskExecutor` uses the current
Dask client or starts a LocalCluster), so there is nothing to start: ``start``/``stop`` only log,
and a tutorial that calls them runs unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger("nemo_aesthetic")


@dataclass
class RayClient:
    """Accepts upstream's arguments; starts and stops nothing (pipelines run on Dask)."""

    ray_port: int = 6379
    ray_dashboard_port: int = 8265
    ray_temp_dir: str = "/tmp/ray"
    include_dashboard: bool = True
    num_gpus: int | None = None
    num_cpus: int | None = None
    enable_object_spilling: bool = False
    ray_dashboard_host: str = "127.0.0.1"

    def start(self) -> None:
        logger.info("RayClient.start(): nothing to start, pipelines run on Dask")

    def stop(self) -> None:
        logger.info("RayClient.stop(): nothing to stop")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
