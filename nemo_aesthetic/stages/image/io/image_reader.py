"""ImageReaderStage: tar shards -> a stream of ImageBatches, through the shard engine."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.engine import read_tars
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.tasks import FileGroupTask, ImageBatch, ImageObject


@dataclass
class ImageReaderStage(ProcessingStage):
    """Read the tars of a :class:`FileGroupTask` into ImageBatches of ``task_batch_size`` images,
    streamed, the tars read ahead (:func:`~nemo_aesthetic.engine.read_tars`). Images keep their
    original sample, not pixels (decoding is the embedding stage's, nvJPEG on a GPU); a sample
    the engine judges unusable is dropped with its reason (:meth:`ImageBatch.drop`).
    ``dali_batch_size`` and ``batch_size`` are upstream's other spellings of ``task_batch_size``."""

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
        batch, read = ImageBatch(dataset_name=task.dataset_name, data=[], _metadata=dict(task._metadata)), 0
        tar_failed = lambda path, error: logger.error("%s: %s; keeping the samples read before it", self.name, error)  # noqa: E731
        for read, (path, item, reason) in enumerate(read_tars(task.data, task.reader_config.get("storage_options", {}),
                                                              self.max_pixels, tar_failed, self.task_batch_size), 1):
            if reason:
                batch.drop(item.key, reason, self.name, path)
            else:
                batch.data.append(ImageObject.from_shard_item(item, path))
            if len(batch.data) == self.task_batch_size:
                yield batch
                batch = ImageBatch(dataset_name=task.dataset_name, data=[], _metadata=dict(task._metadata))
        if batch.data or batch.errors:
            yield batch
        if self.verbose:
            logger.info("%s: read %d sample(s) from %d tar(s)", self.name, read, len(task.data))
