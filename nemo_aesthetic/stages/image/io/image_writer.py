"""ImageWriterStage: each ImageBatch -> ``images-<hash>-<chunk>.tar`` + ``.parquet`` (upstream's output)."""
from __future__ import annotations

import hashlib
import posixpath
import uuid
from dataclasses import dataclass

import fsspec

from nemo_aesthetic.datasets.shards import write_members, write_rows
from nemo_aesthetic.image.preprocess import encode_jpeg
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.tasks import FileGroupTask, ImageBatch
from nemo_aesthetic.tasks.image import image_rows


@dataclass
class ImageWriterStage(ProcessingStage):
    """Write each batch's images into tars of at most ``images_per_tar`` under ``output_dir``,
    each with a Parquet of one row per image; returns a FileGroupTask of the written files.

    Rows hold upstream's columns (``image_id``, ``tar_file``, ``member_name``, ``original_path``,
    ``metadata``) and, beyond upstream, ``caption``, ``embedding``, ``aesthetic_score``,
    ``nsfw_score``. An image read from a tar is written as its original members (image bytes,
    ``.txt``, ``.json``: no re-encoding, captions kept); one that exists only as pixels is
    encoded as JPEG. Files are written atomically; ``output_dir`` may be any fsspec URL.
    """

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

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def construct_base_name(self, task: ImageBatch) -> str:
        if not self.deterministic_name:
            return f"images-{uuid.uuid4().hex[:16]}"
        combined = "|".join(sorted(img.image_path for img in task.data)) + "|" + task.task_id
        return f"images-{hashlib.sha256(combined.encode()).hexdigest()[:12]}"

    def _encode_image_to_bytes(self, image) -> tuple[bytes, str]:
        return encode_jpeg(image), ".jpg"

    def _write_tar(self, base_name: str, members: list[tuple[str, bytes]]) -> str:
        path = posixpath.join(self._root, f"{base_name}.tar")
        if self._fs.exists(path):
            logger.warning(f"File {path} already exists. Overwriting it.")
        return write_members(self._fs, path, members)

    def _write_parquet(self, base_name: str, rows: list[dict]) -> str:
        path = posixpath.join(self._root, f"{base_name}.parquet")
        if self._fs.exists(path):
            logger.warning(f"File {path} already exists. Overwriting it.")
        return write_rows(self._fs, path, rows)

    def process(self, task: ImageBatch) -> FileGroupTask:
        base, tars, parquets = self.construct_base_name(task), [], []
        for n, start in enumerate(range(0, len(task.data), self.images_per_tar)):
            chunk = task.data[start:start + self.images_per_tar]
            members = [image.tar_members(self._encode_image_to_bytes) for image in chunk]
            tar = self._write_tar(f"{base}-{n:06d}", [m for ms in members for m in ms])
            tars.append(tar)
            parquets.append(self._write_parquet(f"{base}-{n:06d}", image_rows(chunk, members, tar)))
            if self.remove_image_data:
                for image in chunk:
                    image.image_data = None
            if self.verbose:
                logger.info(f"{self.name}: wrote {tar} with {len(chunk)} images")
        out = FileGroupTask(dataset_name=task.dataset_name, data=[*tars, *parquets], _stage_perf=task._stage_perf,
                            _metadata={**task._metadata, "output_dir": self.output_dir,
                                       "images_per_tar": self.images_per_tar, "num_images": len(task.data)})
        out.task_id = task.task_id
        return out
