"""What the image stages share: ImageBatch in and out, and the settings of a model stage."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import ImageBatch


class ImageBatchStage(ProcessingStage):
    """A stage that takes the ``data`` (images) of ImageBatches."""

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []


@dataclass
class ImageModelStage(ImageBatchStage):
    """Upstream's first three settings of the embedding and filter stages (``model_dir``, the GPU
    share a worker gives the stage, images per model call) and their resources."""

    model_dir: str = None
    num_gpus_per_worker: float = 0.25
    model_inference_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.model_inference_batch_size < 1:
            raise ValueError("model_inference_batch_size must be >= 1")
        self.resources = self._gpu_resources(self.num_gpus_per_worker)

    def yield_next_batch(self, task: ImageBatch):
        """The images of ``task`` a model call at a time."""
        for i in range(0, len(task.data), self.model_inference_batch_size):
            yield task.data[i:i + self.model_inference_batch_size]
