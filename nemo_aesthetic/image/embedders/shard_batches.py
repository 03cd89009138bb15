"""NeMo Curator 0.x's ``ImageEmbedder.load_dataset_shard`` hook, on the shard engine.

Upstream embedders yield ``(batch of images, [metadata dict per image])`` from each tar and are
matched to the metadata rows through ``metadata[i][id_col]``. Here:

* :func:`engine_batches` is the default hook: the engine reads the tar and preprocesses the
  images (per-image failures are logged and left out of the batches), and each image comes with
  its sample's ``.json`` (or ``{"key": ...}`` when it has none).
* :func:`embed_user_batches` runs a subclass's own ``load_dataset_shard``: each batch goes
  through the model and the fused classifiers, and the results are joined to the rows by id with
  the engine's :class:`~nemo_aesthetic.engine.ShardColumns` - a row the loader never yields keeps
  its metadata with a reason instead of failing the shard (upstream raises on any count mismatch).
"""
from __future__ import annotations

import logging
import posixpath

import fsspec

from nemo_aesthetic.datasets.shards import KeyIndex, load_json_member
from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.engine import (EmbeddedBatch, ShardColumns, default_device, embed_stream,
                                   make_forward, read_shard)

logger = logging.getLogger(__name__)


def sample_metadata(sample) -> dict:
    """The sample's ``.json`` member as a dict (NeMo Curator's per-image metadata), else its key."""
    for ext, _, data in sample.members:
        if ext == "json":
            meta = load_json_member(sample.key, data)
            if isinstance(meta, dict):
                return meta
            break
    return {"key": sample.key}


def engine_batches(embedder, tar_path: str, storage_options: dict | None = None):
    """``(images (n, 3, H, W), [metadata dict] * n)`` batches of one tar, read by the engine."""
    device = embedder.device or default_device()
    model, preprocess = load_object_on_worker(embedder.model_cache_key(device),
                                              embedder.load_model_and_preprocessor, device)
    fs, _ = fsspec.core.url_to_fs(tar_path, **(storage_options or {}))

    def payloads():
        for item in read_shard(fs, tar_path):
            if item.problem is None:
                yield sample_metadata(item.sample), item.image[1]
            else:
                logger.warning("%s: sample %s skipped: %s", tar_path, item.key, item.problem)

    def skipped(meta, reason):
        logger.warning("%s: sample %s skipped: %s", tar_path, meta, reason)

    def as_batch(images):  # no model here: the "forward" hands the preprocessed batch back
        return images, {}

    with embedder.make_batch_preprocessor(model, preprocess, device) as preprocessor:
        for batch in embed_stream(payloads(), preprocessor, as_batch, embedder.batch_size_on(device), skipped):
            yield batch.embeddings, batch.tags


def embed_user_batches(embedder, ids: list, tar_path: str | None, id_col: str,
                       classifiers) -> tuple[ShardColumns, str]:
    """Run a subclass's ``load_dataset_shard`` batches through its model: ``(columns joined by id, tar name)``."""
    device = embedder.device or default_device()
    model = load_object_on_worker(embedder.model_cache_key(device), embedder.load_embedding_model, device)
    scorers = [(clf.pred_column, load_object_on_worker(clf.cache_key(device), clf.load_model, device))
               for clf in classifiers]
    forward = make_forward(model, scorers, device, embedder.normalize_embeddings, embedder.autocast)
    index_of = KeyIndex(ids).position
    batches, seen, unmatched = [], {}, []
    if tar_path is not None:
        for images, metadata in embedder.load_dataset_shard(tar_path):
            embeddings, scores = forward(images)
            positions = [index_of(str(meta.get(id_col))) if isinstance(meta, dict) else None for meta in metadata]
            keep = [i for i, pos in enumerate(positions) if pos is not None]
            unmatched += [metadata[i] for i, pos in enumerate(positions) if pos is None]
            for i in keep:
                seen[positions[i]] = seen.get(positions[i], 0) + 1
            batches.append(EmbeddedBatch([positions[i] for i in keep], embeddings[keep],
                                         {name: values[keep] for name, values in scores.items()}))
    dim = next((b.embeddings.shape[1] for b in batches if len(b.tags)), embedder.embedding_dim or 0)
    run = ShardColumns(ids, dim, [name for name, _ in scorers])
    for batch in batches:
        run.add(batch)
    for pos, count in seen.items():
        run.duplicated[pos] = count > 1
    run.unmatched = len(unmatched)
    run.unmatched_examples = [str(m) for m in unmatched[:5]]
    if tar_path is None:
        run.tar_error = "no tar file for this shard"
    return run, posixpath.basename(tar_path or "")
