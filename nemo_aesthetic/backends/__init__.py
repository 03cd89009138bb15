"""Executors. :class:`~nemo_aesthetic.backends.dask.DaskExecutor` is the one that runs pipelines;
``XennaExecutor``, ``RayDataExecutor`` and ``RayActorPoolExecutor`` are accepted under
upstream's names and run on Dask too (saying so in one log line)."""
