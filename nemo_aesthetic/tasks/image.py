"""ImageObject and ImageBatch (NeMo Curator 1.x's ``nemo_curator.tasks.image``).

An :class:`ImageObject` read from a tar keeps the tar sample it came from (every member's
header and bytes) instead of decoded pixels: ``image_data`` decodes on access, through the
engine's safe decode (size guards), without keeping the pixels. So a batch of 6-MP images costs
their JPEG bytes, not 18 MB each, the writer can copy the original bytes and captions, and
setting ``image_data = None`` (``remove_image_data``) releases the image altogether.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nemo_aesthetic.tasks.tasks import Task

logger = logging.getLogger("nemo_aesthetic")


class _Pixels:
    """``image_data``: what was set, else decoded from the original sample on each access."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the dataclass field's default
        value = obj.__dict__.get("_image_data")
        if value is None and obj.image_bytes is not None:
            from nemo_aesthetic.image.preprocess import decode_image

            return np.asarray(decode_image(obj.image_bytes))
        return value

    def __set__(self, obj, value) -> None:
        if isinstance(value, _Pixels):  # the dataclass default: nothing set
            value = None
        obj.__dict__["_image_data"] = value
        if value is None:
            obj.__dict__["_sample"] = None  # releasing the image releases its original bytes too


@dataclass
class ImageObject:
    """One image with its metadata.

    Attributes:
        image_path: where the image was read from (``<tar path>/<member name>``).
        image_id: the sample key in the tar.
        metadata: the caption (``.txt`` member, else the json's) and the ``.json`` fields.
        image_data: RGB pixels ``(H, W, 3)`` uint8.
        embedding: the L2-normalised image embedding.
        aesthetic_score, nsfw_score: set by the filter stages.
    """

    image_path: str = ""
    image_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_data: np.ndarray | None = field(default=_Pixels(), repr=False, compare=False)
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None

    @property
    def _sample(self):
        """The tar sample this image was read from (None when made from pixels or released)."""
        return self.__dict__.get("_sample")

    @property
    def has_pixels(self) -> bool:
        """True when pixels were set (not merely decodable from the original bytes)."""
        return self.__dict__.get("_image_data") is not None

    @property
    def image_bytes(self) -> bytes | None:
        """The original, undecoded bytes of the image member, if known."""
        sample = self._sample
        if sample is None:
            return None
        from nemo_aesthetic.image.preprocess import pick_image

        picked = pick_image(sample.members)
        return picked[1] if picked else None

    def tar_members(self, encode, key: str | None = None) -> list[tuple[str, bytes]]:
        """What a writer puts in a tar for this image: the original members under ``key``
        (default: the image id), image first (no re-encoding, captions kept), else the pixels as
        ``encode(pixels) -> (bytes, extension)`` makes them."""
        key = self.image_id if key is None else key
        sample = self._sample
        if sample is not None:
            from nemo_aesthetic.image.preprocess import pick_image

            image_ext = pick_image(sample.members)[0]
            return sorted(((f"{key}.{ext}", data) for ext, _, data in sample.members),
                          key=lambda member: not member[0].endswith("." + image_ext))
        if self.image_data is None:
            raise ValueError("ImageObject.image_data is None; cannot write image bytes")
        payload, ext = encode(self.image_data)
        return [(f"{key}{ext}", payload)]

    @property
    def caption(self) -> str | None:
        return self.metadata.get("caption")

    @classmethod
    def from_shard_item(cls, item, tar_path: str) -> "ImageObject":
        """The image of a sample the engine read from ``tar_path`` (an
        :class:`~nemo_aesthetic.engine.ShardItem`), keeping the sample, not pixels."""
        from nemo_aesthetic.datasets.shards import sample_metadata

        image = cls(image_path=f"{tar_path}/{item.key}.{item.image[0]}", image_id=item.key,
                    metadata=sample_metadata(item.sample, item.image[0]))
        image.__dict__["_sample"] = item.sample
        return image


#: A key written into a tar as it is: path components of letters, digits, ``_`` and ``-`` (no
#: ``..``, no leading ``/``, no dot, which would split the key from its extension elsewhere).
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


def safe_member_key(image_id: str) -> str:
    """``image_id`` as a tar member key that extracts inside the extraction folder and splits back
    into the same key: kept when it is already such a key, else every other character
    percent-encoded (``../../x`` -> ``%2E%2E%2F%2E%2E%2Fx``, logged). An id comes from whatever was
    read (a tar's member names, a user's ImageObject), and ``tar -x`` follows ``../`` and ``/``."""
    if _SAFE_KEY.fullmatch(image_id):
        return image_id
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in image_id)
    logger.warning("image id %r is not a safe tar member name; writing it as %s", image_id, safe)
    return safe


def member_keys(images: list[ImageObject], first_position: int = 0) -> list[str]:
    """The sample key of each image in one tar: its id made safe (:func:`safe_member_key`), or (as
    upstream) its position when it has none; a key already used in this tar gets a ``-N`` suffix
    (logged), because two samples under one key would make both unreadable as a pair of image and
    caption."""
    keys, used = [], set()
    for position, image in enumerate(images, first_position):
        key = safe_member_key(image.image_id) if image.image_id else f"{position:06d}"
        if key in used:
            n = 1
            while f"{key}-{n}" in used:
                n += 1
            logger.warning("image id %s appears twice in one output tar; writing the repeat as %s-%d", key, key, n)
            key = f"{key}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def image_rows(images: list[ImageObject], keys: list[str], members: list[list[tuple[str, bytes]]],
               tar_file: str) -> list[dict]:
    """One Parquet row per written image: upstream's columns, then caption, embedding and scores."""
    rows = []
    for image, key, written in zip(images, keys, members):
        meta = {k: v for k, v in image.metadata.items() if not isinstance(v, bytes)}
        rows.append({"image_id": key, "tar_file": tar_file, "member_name": written[0][0],
                     "original_path": image.image_path, "metadata": repr(meta), "caption": image.caption,
                     "embedding": None if image.embedding is None else [float(x) for x in image.embedding],
                     "aesthetic_score": image.aesthetic_score, "nsfw_score": image.nsfw_score})
    return rows


@dataclass
class ImageBatch(Task[list[ImageObject]]):
    """A batch of images. ``_metadata["errors"]`` lists ``(image_id, reason)`` for the images a
    stage dropped because they failed (as opposed to those a filter removed by score)."""

    data: list[ImageObject] = field(default_factory=list)

    def validate(self) -> bool:
        return True

    @property
    def num_items(self) -> int:
        return len(self.data)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return self._metadata.setdefault("errors", [])

    def drop(self, image_id: str, reason: str, by: str, where: str = "") -> None:
        """Stage ``by`` could not process an image: log why (a warning) and list it in ``errors``."""
        logger.warning("%s: dropped image %s%s: %s", by, image_id, f" ({where})" if where else "", reason)
        self.errors.append((image_id, reason))

    def require_embeddings(self, stage: str) -> None:
        """Raise a clear error when a stage that scores embeddings runs before they exist."""
        missing = [im.image_id for im in self.data if im.embedding is None]
        if missing:
            raise TypeError(f"{stage}: {len(missing)} image(s) have no embedding (e.g. {missing[:3]}); "
                            "put an ImageEmbeddingStage before this stage")
