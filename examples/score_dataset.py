"""Score an img2dataset / WebDataset directory with the legacy (NeMo Curator 0.x style) API.

Copy this script and adapt it. It does what ``nemo-aesthetic score`` does, in the API's own words:

    python examples/score_dataset.py /data/laion_shards
    python examples/score_dataset.py /data/laion_shards --threshold 5.5 --filtered-out /data/laion_pretty

Offline, point it at local weight files:

    python examples/score_dataset.py /data/shards \
        --clip-checkpoint vit_l14_openai.pth --aesthetic-weights sac+logos+ava1-l14-linearMSE.pth

A tiny random model (meaningless scores, for a quick check that everything runs):

    torch.save(timm.create_model("vit_large_patch14_clip_quickgelu_224", depth=1, embed_dim=32,
                                 num_heads=2).state_dict(), "tiny.pth")
    python examples/score_dataset.py /data/shards --model vit_large_patch14_clip_quickgelu_224 \
        --clip-checkpoint tiny.pth --model-kwargs '{"depth": 1, "embed_dim": 32, "num_heads": 2}'
"""
import argparse
import json
import os
import sys

import dask
import dask.dataframe as dd

from nemo_aesthetic import AestheticClassifier, ImageTextPairDataset, TimmImageEmbedder, get_client


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", help="dataset directory: NNNNN.tar + NNNNN.parquet shards")
    p.add_argument("--out", default=None, help="write the scored Parquet here (default: over PATH's)")
    p.add_argument("--id-col", default="key")
    p.add_argument("--model", default="vit_large_patch14_clip_quickgelu_224.openai",
                   help="timm model name (default: OpenAI CLIP ViT-L/14, what the aesthetic head expects)")
    p.add_argument("--clip-checkpoint", default=None, help="local timm state dict for the model (offline)")
    p.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON object of timm.create_model kwargs")
    p.add_argument("--aesthetic-weights", default=None,
                   help="sac+logos+ava1-l14-linearMSE.pth (default: $NEMO_AESTHETIC_HOME, downloaded if absent)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2,
                   help="local Dask worker processes; 0: no cluster, run everything in this process with "
                        "dask's synchronous scheduler (small jobs, debugging with pdb)")
    p.add_argument("--scheduler-address", default=None, help="use a running Dask scheduler instead")
    p.add_argument("--threshold", type=float, default=None,
                   help="also write the samples with aesthetic_score >= THRESHOLD to --filtered-out")
    p.add_argument("--filtered-out", default=None)
    args = p.parse_args()
    if args.threshold is not None and (args.filtered_out is None or args.out is not None):
        p.error("--threshold needs --filtered-out, and the scores written in place (no --out)")
    return args


def check_weights_or_exit(args):
    """Offline, say in one line per missing file what to provide, before any cluster starts (instead
    of every worker retrying the Hugging Face hub for a minute and printing a traceback)."""
    from nemo_aesthetic.weights import WeightsUnavailableError, check_clip_weights, resolve_aesthetic_weights

    missing = []
    try:
        if args.clip_checkpoint is None:
            check_clip_weights(args.model)
    except WeightsUnavailableError as exc:
        missing.append(f"{str(exc).splitlines()[0]} Provide --clip-checkpoint PATH (a timm state dict of the "
                       "model), or its files in the Hugging Face cache.")
    except ValueError as exc:  # a model name timm does not know
        sys.exit(f"{sys.argv[0]}: --model: {exc}")
    try:
        resolve_aesthetic_weights(args.aesthetic_weights)
    except WeightsUnavailableError as exc:
        missing.append(f"{str(exc).splitlines()[0]} Provide --aesthetic-weights PATH "
                       "(sac+logos+ava1-l14-linearMSE.pth), or put it in $NEMO_AESTHETIC_HOME.")
    if missing:
        sys.exit("\n".join(f"{sys.argv[0]}: {line}" for line in missing))


def main():
    args = parse_args()
    check_weights_or_exit(args)
    # 1. A Dask client: a local cluster, or a running one (dask scheduler / dask worker).
    client = None
    if args.scheduler_address:
        client = get_client(scheduler_address=args.scheduler_address)
    elif args.workers > 0:
        client = get_client(cluster_type="cpu", n_workers=args.workers)
    else:
        dask.config.set(scheduler="synchronous")

    # 2. The dataset: one lazy metadata partition per shard, tars read on the workers.
    dataset = ImageTextPairDataset.from_webdataset(path=args.path, id_col=args.id_col)

    # 3. CLIP embeddings with the aesthetic head fused in (scored on each batch).
    embedding_model = TimmImageEmbedder(
        args.model,
        pretrained=args.clip_checkpoint is None,
        checkpoint_path=args.clip_checkpoint,
        model_kwargs=args.model_kwargs,
        batch_size=args.batch_size,
        num_threads_per_worker=4,
        classifiers=[AestheticClassifier(model_path=args.aesthetic_weights)],
    )
    dataset_with_scores = embedding_model(dataset)

    # 4. Write the metadata: every row, with image_embedding, aesthetic_score and error.
    dataset_with_scores.save_metadata(args.out)

    # 5. Optionally keep the good ones, as a new WebDataset. The scores were written in place,
    #    so reopening the dataset reads them instead of computing the embeddings again.
    if args.threshold is not None:
        scored = ImageTextPairDataset.from_webdataset(path=args.path, id_col=args.id_col)
        scored.metadata["passes_aesthetic_check"] = scored.metadata["aesthetic_score"] >= args.threshold
        summary = scored.to_webdataset(args.filtered_out, filter_column="passes_aesthetic_check")
        print(f"kept {summary['written']} samples with aesthetic_score >= {args.threshold} "
              f"in {summary['shards']} shard(s) at {args.filtered_out}")

    # 6. A look at the results (only the columns we need; the embeddings stay on disk).
    written = dd.read_parquet(os.path.join(args.out or args.path, "*.parquet"),
                              columns=[args.id_col, "aesthetic_score", "error"]).compute()
    print(written.sort_values("aesthetic_score", ascending=False).head(10).to_string(index=False))
    print(f"{written['aesthetic_score'].notna().sum()} of {len(written)} rows scored")

    if client is not None:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":  # needed: the local cluster starts worker processes that import this file
    main()
