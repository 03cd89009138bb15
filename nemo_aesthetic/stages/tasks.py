"""The units of work that flow between stages.

A :class:`FileGroupTask` names the files of one partition (produced on the client by
:class:`~nemo_aesthetic.stages.file_partitioning.FilePartitioningStage`). An :class:`ImageBatch`
holds :class:`ImageObject` s: one per tar sample, identified by the sample's key.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Task:
    """Base of all tasks: an id unique within a run and the dataset it comes from."""

    task_id: str
    dataset_name: str = ""

    @property
    def num_items(self) -> int:
        return len(getattr(self, "data", ()))


@dataclasses.dataclass
class EmptyTask(Task):
    """What a source stage (one that creates tasks from nothing) receives."""


@dataclasses.dataclass
class FileGroupTask(Task):
    """A partition: the files one Dask task reads, with the fsspec options to open them."""

    data: list[str] = dataclasses.field(default_factory=list)
    storage_options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImageObject:
    """One image and everything known about it.

    Attributes:
        image_id: the sample key in the tar (``000010042`` for ``000010042.jpg``).
        image_path: ``<tar path>/<member name>`` of the image member.
        metadata: ``caption`` (from the ``.txt`` member, else the json's), the ``.json`` member's
            fields, and any other member as ``{extension: bytes}``.
        image_data: decoded RGB pixels, ``(H, W, 3)`` uint8; None once removed.
        embedding: the L2-normalised image embedding (float32), once embedded.
        aesthetic_score, nsfw_score: once scored.
    """

    image_id: str
    image_path: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)
    image_data: np.ndarray | None = dataclasses.field(default=None, repr=False)
    embedding: np.ndarray | None = dataclasses.field(default=None, repr=False)
    aesthetic_score: float | None = None
    nsfw_score: float | None = None
    #: The sample exactly as read from the tar (headers and bytes of every member), so a writer can
    #: copy the original image bytes without re-encoding. Private: None once released.
    _sample: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def caption(self) -> str | None:
        return self.metadata.get("caption")

    @property
    def image_bytes(self) -> bytes | None:
        """The original, undecoded bytes of the image member (None once released)."""
        if self._sample is None:
            return None
        from nemo_aesthetic.image.preprocess import pick_image

        picked = pick_image(self._sample.members)
        return picked[1] if picked else None


@dataclasses.dataclass
class ImageBatch(Task):
    """A batch of images of one partition.

    ``errors`` lists ``(image_id, reason)`` for each image a stage dropped because it failed
    (undecodable, no image member, ...), as opposed to images a filter removed by score.
    """

    data: list[ImageObject] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
