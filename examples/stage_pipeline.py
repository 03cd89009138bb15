"""The stage-style front: filter a WebDataset (tar) dataset by aesthetic quality.

    python examples/stage_pipeline.py /path/to/tar_dataset /path/to/models

``/path/to/models`` is NeMo Curator 1.x's model_dir (``openai/clip-vit-large-patch14`` in Hugging
Face format, ``ttj/sac-logos-ava1-l14-linearMSE/model.safetensors``), or a Hugging Face cache for
timm's CLIP model (``timm/vit_large_patch14_clip_224.openai``) holding
``sac+logos+ava1-l14-linearMSE.pth`` (else the default ``$NEMO_AESTHETIC_HOME`` copy is used,
downloaded and verified if absent). Runs on the current Dask client, or starts a local cluster.
"""
import os
import sys

from nemo_aesthetic.pipeline import Pipeline
from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage


def main(dataset_dir: str, model_dir: str):
    pipeline = Pipeline(name="aesthetic_filtering", description="Filter images by aesthetic quality")
    pipeline.add_stage(FilePartitioningStage(file_paths=dataset_dir, files_per_partition=1, file_extensions=[".tar"]))
    pipeline.add_stage(ImageReaderStage(batch_size=100, num_gpus_per_worker=0.25))
    pipeline.add_stage(ImageEmbeddingStage(model_dir=model_dir, model_inference_batch_size=32, num_gpus_per_worker=0.25))
    # LAION aesthetic scores run ~1-10; LAION-Aesthetics kept >= 5, 6 or 6.5 (0.5 would keep everything).
    pipeline.add_stage(ImageAestheticFilterStage(model_dir=model_dir, score_threshold=5.0, model_inference_batch_size=32, num_gpus_per_worker=0.25))
    results = pipeline.run()

    images = [image for batch in results for image in batch.data]
    print(f"{len(images)} images kept in {len(results)} batches")
    for image in images[:10]:
        print(f"{image.image_id}\t{image.aesthetic_score:.3f}\t{image.metadata.get('caption')!r}")
    return results


def check_weights_or_exit(model_dir: str):
    """Offline, say in one line per missing file what to provide, before any cluster starts (instead
    of every worker retrying the Hugging Face hub for a minute and printing a traceback)."""
    from nemo_aesthetic.models.clip import CLIP_MODEL_ID, DEFAULT_TIMM_MODEL
    from nemo_aesthetic.weights import AESTHETIC_WEIGHTS, WeightsUnavailableError, check_clip_weights, resolve_weights

    missing = []
    if not os.path.exists(os.path.join(model_dir, CLIP_MODEL_ID, "config.json")):
        try:
            check_clip_weights(DEFAULT_TIMM_MODEL, cache_dir=model_dir)
        except WeightsUnavailableError as exc:
            missing.append(f"{str(exc).splitlines()[0]} Provide {model_dir}/{CLIP_MODEL_ID} (Hugging Face format) "
                           f"or the timm weights in the Hugging Face cache {model_dir}.")
    if not os.path.exists(os.path.join(model_dir, AESTHETIC_WEIGHTS.filename)):
        try:
            resolve_weights(AESTHETIC_WEIGHTS)
        except WeightsUnavailableError as exc:
            missing.append(f"{str(exc).splitlines()[0]} Provide {model_dir}/{AESTHETIC_WEIGHTS.filename}.")
    if missing:
        sys.exit("\n".join(f"{sys.argv[0]}: {line}" for line in missing))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} TAR_DATASET_DIR MODEL_DIR")
    check_weights_or_exit(sys.argv[2])
    main(sys.argv[1], sys.argv[2])
