"""ImageWriterStage: each ImageBatch -> ``images-<hash>-<chunk>.tar`` + ``.parquet`` (upstream's output)."""
from __future__ import annotations

import hashlib
import posixpath
import uuid
from dataclasses import dataclass

import fsspec

from nemo_aesthetic.datasets.shard_writer import write_members, write_rows
from nemo_aesthetic.image.preprocess import encode_jpeg
from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.base import ImageBatchStage
from nemo_aesthetic.tasks import FileGroupTask, ImageBatch
from nemo_aesthetic.tasks.image import image_rows, member_keys


@dataclass
class ImageWriterStage(ImageBatchStage):
    """Write each batch's images into tars of at most ``images_per_tar`` under ``output_dir``
    (any fsspec URL), each with a Parquet of one row per image (:func:`~nemo_aesthetic.tasks.image.image_rows`:
    upstream's columns, then caption, embedding and scores), atomically; returns a FileGroupTask
    of the files. A read image is written as its original members (no re-encoding, captions
    kept, :meth:`~nemo_aesthetic.tasks.ImageObject.tar_members`); a pixel-only one as a JPEG."""

    output_dir: str
    images_per_tar: int = 1000
    verbose: bool = False
    deterministic_name: bool = True
    remove_image_data: bool = False
    name: str = "image_writer"

    def __post_init__(self) -> None:
        self.output_dir = str(self.output_dir)
        self._fs, self._root = fsspec.core.url_to_fs(self.output_dir)
        self._fs.makedirs(self._root, exist_ok=True)

    def construct_base_name(self, task: ImageBatch) -> str:
        if not self.deterministic_name:
            return f"images-{uuid.uuid4().hex[:16]}"
        combined = "|".join(sorted(img.image_path for img in task.data)) + "|" + task.task_id
        return f"images-{hashlib.sha256(combined.encode()).hexdigest()[:12]}"

    def _encode_image_to_bytes(self, image) -> tuple[bytes, str]:
        return encode_jpeg(image), ".jpg"

    def _target(self, file_name: str) -> str:
        path = posixpath.join(self._root, file_name)
        if self._fs.exists(path):
            logger.warning(f"File {path} already exists. Overwriting it.")
        return path

    def _write_tar(self, base_name: str, members: list[tuple[str, bytes]]) -> str:
        return write_members(self._fs, self._target(f"{base_name}.tar"), members)

    def _write_parquet(self, base_name: str, rows: list[dict]) -> str:
        return write_rows(self._fs, self._target(f"{base_name}.parquet"), rows)

    def process(self, task: ImageBatch) -> FileGroupTask:
        base, tars, parquets = self.construct_base_name(task), [], []
        for start in range(0, len(task.data), self.images_per_tar):
            chunk, name = task.data[start:start + self.images_per_tar], f"{base}-{start // self.images_per_tar:06d}"
            keys = member_keys(chunk, start)
            members = [image.tar_members(self._encode_image_to_bytes, key) for image, key in zip(chunk, keys)]
            tars.append(self._write_tar(name, [m for ms in members for m in ms]))
            parquets.append(self._write_parquet(name, image_rows(chunk, keys, members, tars[-1])))
            for image in chunk if self.remove_image_data else ():
                image.image_data = None
            if self.verbose:
                logger.info(f"{self.name}: wrote {tars[-1]} with {len(chunk)} images")
        out = FileGroupTask(dataset_name=task.dataset_name, data=[*tars, *parquets], _stage_perf=task._stage_perf,
                            _metadata={**task._metadata, "output_dir": self.output_dir,
                                       "images_per_tar": self.images_per_tar, "num_images": len(task.data)})
        out.task_id = task.task_id
        return out
