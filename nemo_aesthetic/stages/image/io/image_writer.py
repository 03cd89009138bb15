"""ImageWriterStage: surviving images -> new tar shards (original bytes) + one Parquet per tar."""
from __future__ import annotations

import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.datasets.shards import TarShardWriter
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.stages.tasks import ImageBatch, ImageObject


class ImageWriterStage(ProcessingStage):
    """Write the images that reached this stage into new WebDataset tars under ``output_dir``.

    Each partition writes ``<partition>_<nnnnn>.tar`` (``images_per_tar`` samples each) with
    every member of each sample (image, ``.txt``, ``.json``, ...) copied byte for byte from the
    input tar under its original key: no re-encoding. Next to each tar,
    ``<partition>_<nnnnn>.parquet`` holds one row per sample: ``image_id``, ``caption``,
    ``image_path`` (where it was read from), ``embedding`` (fixed-size list<float32>, null if not
    embedded), ``aesthetic_score``, ``nsfw_score``. Both files are written atomically.

    Args:
        output_dir: local path or fsspec URL.
        images_per_tar: samples per output tar.
        storage_options: fsspec options for ``output_dir``.
        remove_image_data: release the decoded pixels and original bytes of written images, so
            the results sent back to the client stay small (their ids, metadata, embeddings and
            scores remain).
        num_gpus_per_worker: accepted for symmetry; writing needs no GPU (default 0).
        verbose: log per-tar counts at INFO.
    """

    name = "image_writer"

    def __init__(self, output_dir: str, images_per_tar: int = 1000, storage_options: dict | None = None,
                 remove_image_data: bool = True, num_gpus_per_worker: float = 0.0, verbose: bool = False):
        if images_per_tar < 1:
            raise ValueError("images_per_tar must be >= 1")
        self.output_dir = str(output_dir)
        self.images_per_tar = images_per_tar
        self.storage_options = dict(storage_options or {})
        self.remove_image_data = remove_image_data
        self.num_gpus_per_worker = num_gpus_per_worker
        self.verbose = verbose

    def process(self, task: ImageBatch) -> ImageBatch:
        return self.process_batch([task])[0]

    def process_batch(self, tasks):
        """All batches of a partition at once, so tars hold ``images_per_tar`` across batches."""
        tasks = list(tasks)
        if not tasks:
            return tasks
        images = [im for t in tasks for im in t.data]
        partition = tasks[0].task_id.rsplit("_", 1)[0]
        fs, root = fsspec.core.url_to_fs(self.output_dir, **self.storage_options)
        fs.makedirs(root, exist_ok=True)
        for n, start in enumerate(range(0, len(images), self.images_per_tar)):
            self._write(fs, posixpath.join(root, f"{partition}_{n:05d}"), images[start:start + self.images_per_tar])
        if self.remove_image_data:
            for im in images:
                im.image_data = None
                im._sample = None
        return tasks

    def _write(self, fs, stem: str, images: list[ImageObject]) -> None:
        missing = [im.image_id for im in images if im._sample is None]
        if missing:
            raise ValueError(f"{self.name}: the original bytes of {len(missing)} image(s) were released "
                             f"(e.g. {missing[:3]}); the writer must come before anything that releases them")
        with TarShardWriter(fs, stem + ".tar") as writer:
            for im in images:
                writer.write(im.image_id, im._sample)
        with atomic_open(fs, stem + ".parquet", "wb") as f:
            pq.write_table(_table(images, posixpath.basename(stem) + ".tar"), f)
        self._log("%s.tar: %d images", stem, len(images))


def _table(images: list[ImageObject], tar_name: str) -> pa.Table:
    dims = {im.embedding.shape[-1] for im in images if im.embedding is not None}
    if len(dims) > 1:
        raise ValueError(f"embeddings of different widths in one tar: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    if dim:
        flat = np.zeros((len(images), dim), dtype=np.float32)
        valid = np.zeros(len(images), dtype=bool)
        for i, im in enumerate(images):
            if im.embedding is not None:
                flat[i] = im.embedding
                valid[i] = True
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim,
                                                      mask=pa.array(~valid))
    else:
        embedding = pa.nulls(len(images), pa.list_(pa.float32()))
    return pa.table({
        "image_id": pa.array([im.image_id for im in images], pa.string()),
        "caption": pa.array([_text(im.caption) for im in images], pa.string()),
        "image_path": pa.array([im.image_path for im in images], pa.string()),
        "tar_file": pa.array([tar_name] * len(images), pa.string()),
        "embedding": embedding,
        "aesthetic_score": pa.array([im.aesthetic_score for im in images], pa.float64()),
        "nsfw_score": pa.array([im.nsfw_score for im in images], pa.float64()),
    })


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)
