"""Thumbnails of the shown rows, read from the dataset's tars (each tar streamed once, and only up
to its last needed sample)."""
from __future__ import annotations

import base64
import io
import logging
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger("nemo_aesthetic.report")

THUMBNAIL_SIZE = 160


# ---------------------------------------------------------------------------------------- images
def thumbnail_data_uri(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """Image bytes -> a ``data:image/jpeg;base64,...`` thumbnail at most ``size`` px on a side.

    Raises :class:`~nemo_aesthetic.image.preprocess.ImageDecodeError` if the bytes do not decode.
    """
    from nemo_aesthetic.image.preprocess import decode_image

    image = decode_image(data)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fetch_thumbnails(dataset, rows, size: int = THUMBNAIL_SIZE, max_threads: int = 8) -> dict:
    """Thumbnails of the given rows' images, read from the dataset's tars.

    ``rows`` is a frame with ``shard`` and ``id`` columns (as from :func:`collect_scores`). Each
    tar that holds a needed image is streamed once, up to its last needed sample; shards are read
    in parallel threads. Returns ``{(shard, id): data URI or None}``; a row whose image cannot be
    found or decoded maps to None (logged at warning level).
    """
    from nemo_aesthetic.datasets.shards import KeyIndex, ShardReadError
    from nemo_aesthetic.engine.sources import shard_samples
    from nemo_aesthetic.image.preprocess import ImageDecodeError, pick_image

    fs = dataset._fs_for(None)[0]
    by_name = {s.name: s for s in dataset.shards}
    needed: dict[str, list] = {}
    for shard, ident in zip(rows["shard"].tolist(), rows["id"].tolist()):  # plain Python values (KeyIndex)
        ids = needed.setdefault(shard, [])
        if ident not in ids:
            ids.append(ident)

    def one_shard(name):
        ids = needed[name]
        result = {(name, i): None for i in ids}
        shard = by_name.get(name)
        if shard is None or (shard.tar is None and shard.source is None):
            logger.warning("shard %s has no tar; %d image(s) not shown", name, len(ids))
            return result
        index = KeyIndex(ids)
        remaining = set(range(len(ids)))
        try:
            for sample in shard_samples(shard, fs, dataset.storage_options):  # a tar, or a folder/Parquet source
                pos = index.position(sample.key)
                if pos is None or pos not in remaining:
                    continue  # not needed, or a repeated key (the first sample is the one scored)
                remaining.discard(pos)
                image = pick_image(sample.members)
                if image is not None:
                    try:
                        result[(name, ids[pos])] = thumbnail_data_uri(image[1], size)
                    except ImageDecodeError as exc:
                        logger.warning("image %s of shard %s: %s", ids[pos], name, exc)
                if not remaining:
                    break  # stop streaming the tar: every needed image is found
        except ShardReadError as exc:
            logger.warning("%s", exc)
        if remaining:
            logger.warning("%d image(s) not found in %s (e.g. %s)", len(remaining), shard.tar or shard.source.path,
                           ids[min(remaining)])
        return result

    thumbs: dict = {}
    if needed:
        with ThreadPoolExecutor(max(1, min(max_threads, len(needed)))) as pool:
            for part in pool.map(one_shard, sorted(needed)):
                thumbs.update(part)
    return thumbs
