"""ConvertImageBatchToDocumentBatchStage (NeMo Curator 1.x's ``stages.image.io.convert``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import DocumentBatch, ImageBatch


@dataclass
class ConvertImageBatchToDocumentBatchStage(ProcessingStage):
    """An ImageBatch -> a DocumentBatch with one column per name in ``fields`` (ImageObject
    attributes; a missing one is None), default ``["image_id"]``."""

    fields: list[str] = field(default_factory=list)
    name: str = "convert_image_batch_to_document_batch"

    def process(self, task: ImageBatch) -> DocumentBatch:
        names = self.fields or ["image_id"]
        data = {name: [getattr(image, name, None) for image in task.data] for name in names}
        return DocumentBatch(dataset_name=task.dataset_name, data=pd.DataFrame(data), _metadata=task._metadata,
                             _stage_perf=task._stage_perf)
