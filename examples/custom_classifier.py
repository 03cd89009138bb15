"""A classifier of your own on CLIP embeddings, written as for NeMo Curator 0.x's ImageClassifier.

The subclass below is what a NeMo Curator user writes (only the package name changes): it loads a
linear probe (``{"weight": (d,) tensor, "bias": () tensor}``, saved with ``torch.save``) in
``load_model``, and ``postprocess`` turns the probe's logits into a yes/no column. Run it on a
dataset whose metadata already holds embeddings (e.g. after ``nemo-aesthetic score``):

    python examples/custom_classifier.py /data/laion_shards --probe watermark_probe.pt --threshold 0.0

or fuse it into an embedder, so it scores each batch straight after the forward pass:

    TimmImageEmbedder(..., classifiers=[AestheticClassifier(), LinearProbeClassifier("probe.pt")])

Rows without an embedding get a null, not an error; the probe file is opened on the workers only
(it may exist only there), once per worker process.
"""
import argparse

import torch

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import ImageClassifier
from nemo_aesthetic.utils.distributed_utils import get_client


class LinearProbeClassifier(ImageClassifier):
    """``pred_column`` = (embedding . weight + bias > threshold), a nullable bool column."""

    def __init__(self, model_path: str, threshold: float = 0.0, embedding_column: str = "image_embedding",
                 pred_column: str = "probe_positive", batch_size: int = -1, embedding_size: int = 768):
        super().__init__(model_name="linear_probe", embedding_column=embedding_column, pred_column=pred_column,
                         pred_type=bool, batch_size=batch_size, embedding_size=embedding_size)
        self.model_path = model_path  # stored, opened in load_model on the worker
        self.threshold = threshold

    def load_model(self, device: str):
        probe = torch.load(self.model_path, map_location=device, weights_only=True)
        weight, bias = probe["weight"].float(), probe["bias"].float()
        return lambda embeddings: embeddings @ weight + bias  # (n,) logits

    def postprocess(self, series):
        return series > self.threshold


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", help="dataset directory whose NNNNN.parquet files hold an embedding column")
    p.add_argument("--probe", required=True, help="torch file with {'weight': (d,), 'bias': ()}")
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--embedding-size", type=int, default=768, help="width of the embeddings (768: ViT-L/14)")
    p.add_argument("--id-col", default="key")
    p.add_argument("--out", default=None, help="write the metadata here (default: over PATH's)")
    p.add_argument("--workers", type=int, default=2, help="local Dask worker processes; 0: run in this process")
    args = p.parse_args()

    client = get_client(cluster_type="cpu", n_workers=args.workers) if args.workers > 0 else None
    try:
        dataset = ImageTextPairDataset.from_webdataset(args.path, args.id_col)
        classifier = LinearProbeClassifier(args.probe, threshold=args.threshold, embedding_size=args.embedding_size)
        classifier(dataset).save_metadata(args.out)
        flagged = ImageTextPairDataset.from_webdataset(args.out or args.path, args.id_col).metadata[
            classifier.pred_column].compute()
        print(f"{classifier.pred_column}: {int(flagged.sum())} of {int(flagged.notna().sum())} scored rows")
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
