"""ImageReaderStage: tar shards -> batches of decoded images with their captions and metadata."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np

from nemo_aesthetic.datasets.shards import Sample, ShardReadError, iter_samples
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, pick_image
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.stages.tasks import FileGroupTask, ImageBatch, ImageObject


class ImageReaderStage(ProcessingStage):
    """Read each tar of a partition (streamed through fsspec) into :class:`ImageBatch` es.

    Every sample with an image member becomes an :class:`ImageObject` whose ``image_id`` is the
    sample key, with the caption (``.txt``) and ``.json`` fields in ``metadata`` and the original
    member bytes kept for :class:`ImageWriterStage`. A sample whose image cannot be decoded, that
    has no image member, or that repeats an earlier key is dropped with its reason logged on
    logger ``nemo_aesthetic`` (and listed in the batch's ``errors``); the rest of the shard goes
    on. A truncated tar keeps the samples read before the damage.

    Args:
        batch_size: images per output batch.
        num_threads: decoding threads.
        num_gpus_per_worker: GPU share per partition task on clusters whose workers advertise a
            ``GPU`` resource; ignored on CPU (decoding here runs on the CPU either way).
        verbose: log per-shard counts at INFO.
        max_pixels: images with more pixels are dropped (decompression bombs).
    """

    name = "image_reader"

    def __init__(self, batch_size: int = 100, num_threads: int = 8, num_gpus_per_worker: float = 0.25,
                 verbose: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.num_threads = max(1, num_threads)
        self.num_gpus_per_worker = num_gpus_per_worker
        self.verbose = verbose
        self.max_pixels = max_pixels

    def process(self, task: FileGroupTask) -> list[ImageBatch]:
        batches: list[ImageBatch] = []
        errors: list[tuple[str, str]] = []
        pending: list[Sample] = []
        tar_of: dict[int, str] = {}

        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="decode") as pool:

            def flush():
                images = self._decode_all(pool, pending, tar_of, errors)
                batches.append(ImageBatch(task_id=f"{task.task_id}_{len(batches):05d}",
                                          dataset_name=task.dataset_name, data=images, errors=list(errors)))
                pending.clear()
                tar_of.clear()
                errors.clear()

            for path in task.data:
                start, n_read, seen = time.perf_counter(), 0, set()
                fs, fs_path = fsspec.core.url_to_fs(path, **task.storage_options)
                skipped: list[str] = []
                try:
                    for sample in iter_samples(fs, fs_path, skipped):
                        n_read += 1
                        if not getattr(sample, "complete", True):
                            self._drop(errors, sample.key, path, "sample cut off where the tar is damaged "
                                       "(members after the damage are missing)")
                            continue
                        if sample.refused:  # a member too large or sparse: left unread in the tar
                            self._drop(errors, sample.key, path, sample.refused)
                            continue
                        if sample.key in seen:
                            self._drop(errors, sample.key, path, "duplicate key: an earlier sample of this "
                                       "tar has the same key; the first one is kept")
                            continue
                        seen.add(sample.key)
                        tar_of[id(sample)] = path
                        pending.append(sample)
                        if len(pending) == self.batch_size:
                            flush()
                except ShardReadError as exc:
                    logger.error("%s: %s; keeping the %d samples read before it", self.name, exc, n_read)
                if skipped:
                    logger.warning("%s: %s: skipped %d member(s) with no key.extension name (e.g. %s)",
                                   self.name, path, len(skipped), skipped[:3])
                self._log("%s: %d samples in %.2fs", path, n_read, time.perf_counter() - start)
            if pending or errors:
                flush()
        return batches

    def _drop(self, errors, key: str, path: str, reason: str) -> None:
        logger.warning("%s: dropped image %s of %s: %s", self.name, key, path, reason)
        errors.append((key, reason))

    def _decode_all(self, pool, samples: list[Sample], tar_of: dict, errors: list) -> list[ImageObject]:
        picked = [pick_image(s.members) for s in samples]
        futures = [pool.submit(decode_image, image[1], self.max_pixels) if image else None for image in picked]
        images: list[ImageObject] = []
        for sample, image, future in zip(samples, picked, futures):
            path = tar_of[id(sample)]
            if image is None:
                self._drop(errors, sample.key, path,
                           f"sample has no image member (has: {', '.join(sample.extensions())})")
                continue
            try:
                pixels = np.asarray(future.result())
            except ImageDecodeError as exc:
                self._drop(errors, sample.key, path, str(exc))
                continue
            images.append(ImageObject(image_id=sample.key, image_path=f"{path}/{sample.key}.{image[0]}",
                                      metadata=_metadata(sample, image[0], path), image_data=pixels,
                                      _sample=sample))
        return images


def _metadata(sample: Sample, image_ext: str, path: str) -> dict:
    """Caption from ``.txt`` (else the json's ``caption``), the ``.json`` fields, other members."""
    meta: dict = {}
    caption = None
    for ext, _, data in sample.members:
        low = ext.lower()
        if low == image_ext:
            continue
        if low == "json":
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                logger.warning("image_reader: %s of %s: unreadable .json kept as bytes: %s", sample.key, path, exc)
                meta["json"] = data
                continue
            if isinstance(parsed, dict):
                meta.update(parsed)
            else:
                meta["json"] = parsed
        elif low == "txt":
            caption = data.decode("utf-8", errors="replace")
        else:
            meta[ext] = data
    if caption is not None:
        meta["caption"] = caption
    else:
        meta.setdefault("caption", None)
    return meta
