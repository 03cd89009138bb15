"""ImageReaderStage: tar shards -> a stream of ImageBatches, through the shard engine."""
from __future__ import annotations

from dataclasses import dataclass

import fsspec

from nemo_aesthetic.datasets.shards import ShardReadError, sample_metadata
from nemo_aesthetic.engine import read_shard
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.tasks import FileGroupTask, ImageBatch, ImageObject


@dataclass
class ImageReaderStage(ProcessingStage):
    """Read the tars of a :class:`FileGroupTask` into ImageBatches of ``task_batch_size`` images.

    ``image_id`` is the sample key, ``metadata`` holds the caption and ``.json`` fields, and the
    original sample is kept (``image_data`` decodes it on access), so a batch holds JPEG bytes,
    not pixels. A sample that is not an image (by its header), too large, without an image
    member, cut off by a damaged tar, or a repeat of a key (the first is kept) is dropped with
    its reason logged and listed in the batch's ``errors``. ``dali_batch_size`` and
    ``batch_size`` are accepted spellings of ``task_batch_size``; decoding is PIL on the CPU.
    """

    dali_batch_size: int | None = None
    verbose: bool = True
    num_threads: int = 8
    num_gpus_per_worker: float = 0.25
    name: str = "image_reader"
    task_batch_size: int = 100
    batch_size: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.task_batch_size = self.batch_size or self.dali_batch_size or self.task_batch_size
        if self.task_batch_size < 1:
            raise ValueError("task_batch_size must be >= 1")
        self.resources = self._gpu_resources(self.num_gpus_per_worker)

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_data", "image_path", "image_id"]

    def process(self, task: FileGroupTask) -> list[ImageBatch]:
        return list(self.process_stream(task))

    def process_stream(self, task: FileGroupTask):
        if not task.data:
            raise ValueError(f"No tar file paths in task {task.task_id}")
        batch = ImageBatch(dataset_name=task.dataset_name, data=[], _metadata=dict(task._metadata))
        for path in task.data:
            fs, fs_path = fsspec.core.url_to_fs(path, **task.reader_config.get("storage_options", {}))
            try:
                for item in read_shard(fs, fs_path):
                    self._add(batch, item, path)
                    if len(batch.data) == self.task_batch_size:
                        yield batch
                        batch = ImageBatch(dataset_name=task.dataset_name, data=[], _metadata=dict(task._metadata))
            except ShardReadError as exc:
                logger.error("%s: %s; keeping the samples read before it", self.name, exc)
            if self.verbose:
                logger.info("%s: read %s", self.name, path)
        if batch.data or batch.errors:
            yield batch

    def _add(self, batch: ImageBatch, item, path: str) -> None:
        reason = item.check(self.max_pixels)
        if reason:
            logger.warning("%s: dropped image %s of %s: %s", self.name, item.key, path, reason)
            batch.errors.append((item.key, reason))
        else:
            batch.data.append(ImageObject.from_sample(item.sample, f"{path}/{item.key}.{item.image[0]}",
                                                      sample_metadata(item.sample, item.image[0])))
