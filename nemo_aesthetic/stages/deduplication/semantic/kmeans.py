"""KMeansStage (NeMo Curator 1.x's ``semantic.kmeans``): cluster the embeddings of Parquet/JSONL
files and write them partitioned by cluster, with the engine's distributed k-means
(:mod:`nemo_aesthetic.dedup.kmeans`: torch on each worker's device, no RAFT/cuML needed)."""
from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np

from nemo_aesthetic.dedup.clusters import start_unique_id_check, write_clusters
from nemo_aesthetic.dedup.kmeans import PERSIST_BELOW_BYTES, fit_kmeans
from nemo_aesthetic.stages.base import CompositeStage, ProcessingStage
from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
from nemo_aesthetic.stages.resources import Resources
from nemo_aesthetic.tasks import FileGroupTask
from nemo_aesthetic.stages.deduplication.semantic.utils import disallow_kwargs as _disallow

logger = logging.getLogger("nemo_aesthetic")

L2_DIST_TO_CENT_COL = "l2_dist_to_cent"
COSINE_DIST_TO_CENT_COL = "cosine_dist_to_cent"
#: Where rows that cannot be clustered go (beside ``output_path``), each with its reason.
UNCLUSTERED_DIR = "unclustered"


def get_default_file_extensions(filetype: str) -> list[str]:
    if filetype == "parquet":
        return [".parquet"]
    if filetype == "jsonl":
        return [".jsonl", ".json"]
    raise ValueError(f"Unsupported filetype: {filetype}")


class KMeansReadFitWriteStage(ProcessingStage):
    """Reads all the files of its tasks as one Dask DataFrame, fits k-means on the workers and
    writes ``output_path/centroid=<k>/part.<n>.parquet``. It is a whole-dataset stage: the
    executor hands it every task at once (:meth:`run_on_dask`)."""

    def __init__(self, id_field: str, embedding_field: str, output_path: str,
                 filetype: Literal["parquet", "jsonl"], n_clusters: int, metadata_fields: list[str] | None = None,
                 embedding_dim: int | None = None, verbose: bool = False, max_iter: int = 300, tol: float = 1e-4,
                 random_state: int = 42, init: str | np.ndarray = "k-means||", n_init: int | str = 1,
                 oversampling_factor: float = 2.0, max_samples_per_batch: int = 1 << 15,
                 fit_data_fraction: float | None = None, cache_path: str | None = None,
                 read_kwargs: dict | None = None, write_kwargs: dict | None = None):
        self.id_field, self.embedding_field, self.output_path = id_field, embedding_field, output_path
        self.filetype, self.n_clusters = filetype, n_clusters
        self.metadata_fields = metadata_fields if metadata_fields is not None else []
        self.embedding_dim, self.verbose, self.max_iter, self.tol = embedding_dim, verbose, max_iter, tol
        self.random_state, self.init, self.n_init = random_state, init, n_init
        self.oversampling_factor, self.max_samples_per_batch = oversampling_factor, max_samples_per_batch
        if fit_data_fraction is not None and not 0.0 < fit_data_fraction < 1.0:
            raise ValueError(f"fit_data_fraction must be in (0, 1), got {fit_data_fraction}; "
                             "pass None to fit on the full dataset")
        self.fit_data_fraction = fit_data_fraction
        self.cache_path = cache_path
        self.read_kwargs = dict(read_kwargs or {})
        self.write_kwargs = dict(write_kwargs or {})
        _disallow(self.read_kwargs, ["columns", "assign_id"])
        _disallow(self.write_kwargs, ["partition_file_name", "partition_cols", "index"])
        self.input_storage_options = self.read_kwargs.pop("storage_options", None)
        self.output_storage_options = self.write_kwargs.pop("storage_options", None)
        self.name = "KMeansStage"
        self.resources = Resources(cpus=1.0, gpus=1.0) if _has_cuda() else Resources(cpus=1.0)

    def process(self, task):
        raise NotImplementedError("KMeansReadFitWriteStage does not support single-task processing")

    def read(self, files: list[str]):
        """The files as one Dask DataFrame of the id, metadata and embedding columns."""
        import dask.dataframe as dd

        from nemo_aesthetic import frames

        columns = list(dict.fromkeys([self.id_field, *self.metadata_fields, self.embedding_field]))
        if self.filetype == "jsonl":
            return dd.read_json(files, lines=True, storage_options=self.input_storage_options,
                                **self.read_kwargs)[columns]
        kwargs = dict(self.read_kwargs)
        if frames.backend() == "pandas":
            kwargs.setdefault("dtype_backend", "pyarrow")  # embeddings stay one Arrow buffer per column
        return dd.read_parquet(files, columns=columns, storage_options=self.input_storage_options, **kwargs)

    def run_on_dask(self, client, tasks: list[FileGroupTask]) -> list[FileGroupTask]:
        files = [f for task in tasks for f in task.data]
        if not files:
            raise FileNotFoundError("KMeansStage: no input files")
        ddf = self.read(files)
        ids_checked = start_unique_id_check(ddf, self.id_field)  # beside the fit, on the workers
        init = self.init if isinstance(self.init, np.ndarray) else ("random" if self.init == "random" else "k-means++")
        result = fit_kmeans(ddf, self.embedding_field, self.n_clusters, max_iter=self.max_iter, tol=self.tol,
                            random_state=self.random_state, fit_data_fraction=self.fit_data_fraction, init=init,
                            hold=self._small_enough_to_hold(files), keep_columns=[self.id_field, *self.metadata_fields])
        ids_checked()  # before anything is written
        left_out_path = posixpath.join(posixpath.dirname(str(self.output_path).rstrip("/")), UNCLUSTERED_DIR)
        clustered, left_out = write_clusters(
            ddf, self.embedding_field, result.centroids, self.output_path,
            [self.id_field, *self.metadata_fields], left_out_path=left_out_path,
            storage_options=self.output_storage_options, held=result.held)
        if self.cache_path:
            fs, root = fsspec.core.url_to_fs(self.cache_path, **(self.output_storage_options or {}))
            fs.makedirs(root, exist_ok=True)
            with fs.open(posixpath.join(root, "kmeans_centroids.npy"), "wb") as f:
                np.save(f, result.centroids)
        dataset_name = tasks[0].dataset_name if tasks else "kmeans"
        return [FileGroupTask(dataset_name=dataset_name, data=[self.output_path],
                              _metadata={"n_clusters": self.n_clusters, "rows": clustered, "unclustered": left_out,
                                         "unclustered_path": left_out_path if left_out else None,
                                         "n_iter": result.n_iter, "inertia": result.inertia})]

    def _small_enough_to_hold(self, files: list[str]) -> bool | None:
        """Whether the files are small enough for k-means to keep their embeddings in the workers'
        memory (their size on disk is about that of the float32 vectors: floats do not compress),
        so the data is not read once more only to learn its size. Sizes come from the listing
        (cached by fsspec) for up to 1,000 files; None (decide after one pass) beyond."""
        if len(files) > 1000:
            return None
        try:
            fs, _ = fsspec.core.url_to_fs(files[0], **(self.input_storage_options or {}))
            return sum(fs.size(f) for f in files) <= PERSIST_BELOW_BYTES
        except (OSError, TypeError, ValueError):
            return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class KMeansStage(CompositeStage):
    """Cluster the embeddings of ``input_path`` into ``n_clusters``; writes
    ``output_path/centroid=<k>/`` with the id, ``metadata_fields``, the L2-normalised embedding,
    ``l2_dist_to_cent`` and ``cosine_dist_to_cent``. ``init`` "k-means||" is k-means++ on a
    sample here; ``n_init``, ``oversampling_factor``, ``max_samples_per_batch`` are accepted
    (cuML's knobs). Rows without a usable embedding go to ``<output_path>/../unclustered/``
    with a reason instead of failing the job."""

    n_clusters: int
    id_field: str
    embedding_field: str
    input_path: str | list[str]
    output_path: str
    metadata_fields: list[str] | None = None
    verbose: bool = False
    embedding_dim: int | None = None
    input_filetype: Literal["jsonl", "parquet"] = "parquet"
    input_file_extensions: list[str] | None = None
    read_kwargs: dict[str, Any] | None = None
    write_kwargs: dict[str, Any] | None = None
    max_iter: int = 300
    tol: float = 1e-4
    random_state: int = 42
    init: Any = "k-means||"
    n_init: int | str = 1
    oversampling_factor: float = 2.0
    max_samples_per_batch: int = 1 << 15
    fit_data_fraction: float | None = None
    cache_path: str | None = None

    def __post_init__(self):
        self.name = "KMeansStage"
        if self.fit_data_fraction is not None and not 0.0 < self.fit_data_fraction < 1.0:
            raise ValueError(f"fit_data_fraction must be in (0, 1), got {self.fit_data_fraction}; "
                             "pass None to fit on the full dataset")

    def decompose(self) -> list[ProcessingStage]:
        extensions = self.input_file_extensions or get_default_file_extensions(self.input_filetype)
        return [
            FilePartitioningStage(file_paths=self.input_path, file_extensions=extensions, files_per_partition=1,
                                  storage_options=(self.read_kwargs or {}).get("storage_options")),
            KMeansReadFitWriteStage(
                id_field=self.id_field, embedding_field=self.embedding_field, output_path=self.output_path,
                filetype=self.input_filetype, n_clusters=self.n_clusters, metadata_fields=self.metadata_fields,
                verbose=self.verbose, embedding_dim=self.embedding_dim, max_iter=self.max_iter, tol=self.tol,
                random_state=self.random_state, init=self.init, n_init=self.n_init,
                oversampling_factor=self.oversampling_factor, max_samples_per_batch=self.max_samples_per_batch,
                fit_data_fraction=self.fit_data_fraction, read_kwargs=self.read_kwargs,
                write_kwargs=self.write_kwargs, cache_path=self.cache_path),
        ]
