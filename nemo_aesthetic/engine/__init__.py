"""The shard engine: tar shard -> samples by key -> safe decode -> batches -> model -> columns.

Both fronts run images through this package and nothing else, so a protection added here (a size
guard, a per-row reason, an out-of-memory retry) protects both:

* the legacy front (:class:`~nemo_aesthetic.image.embedders.base.ImageEmbedder`) joins the
  results to its metadata rows by key (:class:`ShardColumns`);
* the stage front (``nemo_aesthetic.stages``) reads whole images (:func:`read_tars`) and
  streams the same batches between its stages.

The steps are separate public pieces so that each can be replaced on its own
(:mod:`.reading`, :mod:`.batching`, :mod:`.columns`):

:mod:`.sources`
    every layout's samples as the engine reads them: a source per layout (WebDataset tars,
    a folder of image files, Parquet with image bytes) describes its partitions as small
    picklable specs and reads one on a worker (``read_items``), judged like a tar's samples.
``read_shard``
    the tar's samples grouped by key, each judged by :class:`SeenKeys` (the one duplicate-key
    rule) and given its image member; ``read_tars`` reads several tars ahead of the consumer.
:class:`BatchPreprocessor`
    image bytes -> model inputs, one batch at a time. The default runs a per-image function
    (PIL decode with the size guards + timm's transform) in a thread pool; a subclass may decode
    a whole batch at once (e.g. nvJPEG) by overriding :meth:`BatchPreprocessor.start`.
``embed_stream``
    preprocessed batches -> ``forward`` -> :class:`EmbeddedBatch` es, with the next batches
    being preprocessed while the model runs, an optional per-batch progress callback, and every
    decode failure reported with its reason.
``make_forward``
    the model call: pinned host copies, bf16 autocast on CUDA, L2 normalisation, the fused
    classifiers, and halving a batch that runs out of GPU memory.

Memory is bounded by the batch, not the shard: a couple of preprocessing chunks and one model
batch are held at a time, and samples are read from the tar one at a time.
"""
from nemo_aesthetic.engine.batching import (BatchPreprocessor, BatchProgress, EmbeddedBatch, default_device,
                                            embed_stream, make_forward)
from nemo_aesthetic.engine.columns import ShardColumns
from nemo_aesthetic.engine.reading import SeenKeys, ShardItem, read_shard, read_tars

__all__ = ["BatchPreprocessor", "BatchProgress", "EmbeddedBatch", "SeenKeys", "ShardColumns", "ShardItem",
           "default_device", "embed_stream", "make_forward", "read_shard", "read_tars"]
