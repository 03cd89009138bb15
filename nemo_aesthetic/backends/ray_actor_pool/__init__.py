"""RayActorPoolExecutor under NeMo Curator 1.x's name: accepted, and runs the pipeline on Dask (see
:class:`~nemo_aesthetic.backends.dask.DaskExecutor`), saying so in one log line."""
from nemo_aesthetic.backends.dask import DaskExecutor


class RayActorPoolExecutor(DaskExecutor):
    upstream_name = "RayActorPoolExecutor"


__all__ = ["RayActorPoolExecutor"]
