"""score_embeddings: aesthetic scores for embeddings you already have, at the speed they can be read.

The job is I/O-bound by design: the head is the project's folded scorer (one mat-vec per row, see
``image/classifiers/aesthetic.py``), rows arrive in fixed-size batches read straight into a reused
buffer (``layouts.py``), and nothing runs per row in Python. Each input file becomes one Parquet
file of the same name under ``out``, in the same order, written atomically; a file already written
by the same head (and columns) is skipped, so re-running continues an interrupted job.
"""
from __future__ import annotations

import json
import logging
import posixpath
import time
import warnings

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.engine.partitions import from_shards, map_groups
from nemo_aesthetic.embeddings.layouts import (
    EmbeddingFile,
    EmbeddingFileError,
    iter_npy_rows,
    iter_parquet_rows,
    plan_files,
)
from nemo_aesthetic.prefetch import prefetch
from nemo_aesthetic.weights import sha256_of

logger = logging.getLogger(__name__)

SCORE_COLUMN = "aesthetic_score"
ERROR_COLUMN = "error"
#: Per-row reasons, by code (0: scored).
REASONS = {1: "embedding is null", 2: "embedding has NaN or infinite values", 3: "embedding is all zeros (zero norm)"}
#: Parquet schema metadata recording which head wrote a file (resume skips only its own files).
PROVENANCE_KEY = b"nemo_aesthetic.score_embeddings"


def score_embeddings(embeddings: str, out: str, *, file_format: str = "npy", metadata: str | None = None,
                     head: str = "v2", embedding_column: str = "embedding", columns: list[str] | None = None,
                     storage_options: dict | None = None, client=None, batch_rows: int = 65536,
                     rows_per_task: int = 2**21, model_path: str | None = None) -> dict:
    """Score every embedding under ``embeddings`` and write ``out/<file>.parquet`` per input file.

    Args:
        embeddings: a folder in one of embedding-reader's layouts (local path or fsspec URL).
        out: the output folder (not inside an input folder).
        file_format: "npy" (``*.npy``, float16/float32), "parquet_npy" (``*.npy`` plus the
            metadata Parquet files in ``metadata``, paired by sorted position, same row counts)
            or "parquet" (``*.parquet`` with the embeddings in ``embedding_column``).
        metadata: the metadata folder of the "parquet_npy" layout.
        head: "v2", or a LAION-Aesthetics V1 head ("v1" = ViT-L/14, "v1-l14", "v1-b16",
            "v1-b32"); its width must match the embeddings (checked before any work).
        embedding_column: the list column of the "parquet" layout.
        columns: metadata columns copied to the output, in this order (default: all but the
            embedding column); "npy" has none.
        storage_options: fsspec options for every path (e.g. S3 credentials or endpoint).
        client: a ``distributed.Client`` to run on (default: dask's current scheduler).
        batch_rows: rows read and scored at once: a worker holds about ``batch_rows x d`` floats.
        rows_per_task: a bigger ``.npy`` file is scored as several tasks of this many rows.
        model_path: the head's weights file (default: the cache's, downloaded and verified if absent).

    Each output holds the chosen metadata columns, ``aesthetic_score`` (float32, null where the
    embedding is null, NaN/infinite or all zeros) and ``error`` (the reason, else null), row for
    row in input order. Embeddings are scored as given: they should be L2-normalised, as
    clip-retrieval writes them. Returns ``{"written": [...], "skipped": [...], "rows": n,
    "errors": {reason: count}}`` (``rows`` and ``errors`` count the written files).
    """
    from nemo_aesthetic.image.classifiers.aesthetic import AestheticClassifier

    storage_options = storage_options or {}
    fs, root = fsspec.core.url_to_fs(embeddings, **storage_options)
    meta_fs, meta_root = fsspec.core.url_to_fs(metadata, **storage_options) if metadata else (None, None)
    out_fs, out_root = fsspec.core.url_to_fs(out, **storage_options)
    root, out_root = root.rstrip("/"), out_root.rstrip("/")
    for name, (in_fs, in_root) in {"embeddings": (fs, root), "metadata": (meta_fs, meta_root)}.items():
        if in_root and in_fs.protocol == out_fs.protocol and (out_root + "/").startswith(in_root.rstrip("/") + "/"):
            raise ValueError(f"out={out!r} is inside the {name} folder; write the scores elsewhere")
    if file_format == "npy" and columns:
        raise ValueError("file_format='npy' has no metadata columns; use 'parquet_npy' with metadata=")
    if metadata and file_format != "parquet_npy":
        raise ValueError(f"metadata= is for file_format='parquet_npy', not {file_format!r}")
    if batch_rows < 1 or rows_per_task < 1:
        raise ValueError("batch_rows and rows_per_task must be >= 1")

    files = plan_files(fs, root, file_format, embedding_column, meta_fs, meta_root)
    classifier = AestheticClassifier(head=head, model_path=model_path)
    classifier.check_embedding_dim(files[0].dim, source=files[0].path)  # before any work
    # What makes an existing output "this job's": resume skips only files written with the same head
    # and columns, so a run with other settings rewrites them instead of mixing silently.
    weights = classifier.weights.sha256 if model_path is None else sha256_of(model_path)
    provenance = json.dumps({"head": classifier.concrete_head, "weights": weights,
                             "columns": columns})
    out_fs.makedirs(out_root, exist_ok=True)
    targets = [posixpath.join(out_root, f"{f.name}.parquet") for f in files]
    done = _already_written(out_fs, targets, files, provenance)

    # One task per row range (``rows_per_task``), then one write task per file taking its own
    # ranges: a graph linear in files, each task carrying its own file only.
    chunks, groups, writes = [], [], []
    for f, target in zip(files, targets):
        if target in done:
            continue
        source = (meta_fs, f.metadata) if file_format == "parquet_npy" else (fs, f.path) if file_format == "parquet" else None
        step = rows_per_task if file_format != "parquet" else max(f.count, 1)
        starts = range(0, max(f.count, 1), step)
        groups.append(range(len(chunks), len(chunks) + len(starts)))
        chunks += [(f, start, min(start + step, f.count)) for start in starts]
        writes.append((f, source, target))
    results = []
    if writes:
        scored = from_shards(_score_chunk, chunks, fs=fs, classifier=classifier, embedding_column=embedding_column,
                             batch_rows=batch_rows, meta=_SCORES_META, label="score-embeddings")
        summaries = map_groups(_write_scores_task, scored, groups, writes, columns, embedding_column, out_fs,
                               provenance, batch_rows, meta=pd.Series([], dtype=object), label="write-scores")
        results = list(client.compute(summaries).result() if client is not None else summaries.compute())
    errors: dict[str, int] = {}
    for r in results:
        for reason, n in r["errors"].items():
            errors[reason] = errors.get(reason, 0) + n
    if done:
        logger.info("score_embeddings: %d file(s) already written by this head, %d written", len(done), len(writes))
    return {"written": [t for t in targets if t not in done], "skipped": [t for t in targets if t in done],
            "rows": sum(r["rows"] for r in results), "errors": errors}


def _already_written(fs, targets: list[str], files: list[EmbeddingFile], provenance: str) -> set[str]:
    """Outputs that exist, were written with these settings and hold the file's row count (footers only)."""
    from concurrent.futures import ThreadPoolExecutor

    def complete(pair):
        target, f = pair
        try:
            with fs.open(target, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            return meta.num_rows == f.count and (meta.metadata or {}).get(PROVENANCE_KEY) == provenance.encode()
        except Exception:  # missing or unreadable: write it
            return False

    with ThreadPoolExecutor(32) as pool:
        return {t for t, ok in zip(targets, pool.map(complete, zip(targets, files))) if ok}


_SCORES_META = pd.DataFrame({"score": np.zeros(0, np.float32), "code": np.zeros(0, np.uint8)})


def _score_chunk(chunk, fs, classifier, embedding_column: str, batch_rows: int) -> pd.DataFrame:
    """One task's rows: ``chunk`` is ``(file, start, stop)``."""
    scores, codes = _score_rows(fs, *chunk, classifier, embedding_column, batch_rows)
    return pd.DataFrame({"score": scores, "code": codes})


def _write_scores_task(parts, write, columns, embedding_column: str, out_fs, provenance: str,
                       batch_rows: int) -> pd.Series:
    file, source, target = write
    arrays = [(p["score"].to_numpy(np.float32), p["code"].to_numpy(np.uint8)) for p in parts]
    return pd.Series([_write_scores(arrays, file, source, columns, embedding_column, out_fs, target, provenance,
                                    batch_rows)], dtype=object)


def _score_rows(fs, file: EmbeddingFile, start: int, stop: int, classifier, embedding_column: str,
                batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float32, NaN where not scored) and reason codes (uint8) of rows ``start..stop``."""
    import torch

    from nemo_aesthetic.image.embedders.base import default_device

    device = classifier.device or default_device()
    scorer = load_object_on_worker(classifier.cache_key(device), classifier.load_model, device)
    scores = np.empty(stop - start, np.float32)
    codes = np.zeros(stop - start, np.uint8)
    began = time.perf_counter()
    # Read one batch ahead on a second thread: reading (I/O, page faults) overlaps scoring.
    if file.dtype is not None:  # .npy
        batches = prefetch(((rows, None) for rows in iter_npy_rows(fs, file, start, stop, batch_rows)), depth=1)
    else:
        batches = prefetch(iter_parquet_rows(fs, file, embedding_column, batch_rows), depth=1)
    at = 0
    block = torch.empty(0)
    with torch.inference_mode():
        zero_score = float(scorer(torch.zeros(1, file.dim, device=device)).item())
        for rows, valid in batches:
            n = len(rows)
            s, block = _score_batch(rows, scorer, device, block)
            scores[at:at + n] = s
            chunk = codes[at:at + n]
            chunk[~np.isfinite(s)] = 2
            # An all-zero row scores exactly the bias: check only the rows that do (a rare few).
            for i in np.flatnonzero(s == zero_score):
                if not rows[i].any():
                    chunk[i] = 3
            if valid is not None:
                chunk[~valid] = 1
            at += n
    scores[codes != 0] = np.nan
    elapsed = time.perf_counter() - began
    logger.info("%s rows %d-%d: %d scored, %d not, %.0f rows/s", file.path, start, stop, int((codes == 0).sum()),
                int((codes != 0).sum()), (stop - start) / elapsed if elapsed > 0 else 0.0)
    return scores, codes


#: Rows widened to float32 and scored at a time on CPU: a float32 block this size (6 MiB) stays
#: in cache between the conversion and the mat-vec, so float16 input costs one pass over memory.
CPU_BLOCK_ROWS = 2048


def _score_batch(rows: np.ndarray, scorer, device: str, block):
    """float32 scores of one batch; ``block`` is a reused float32 buffer (returned, maybe grown)."""
    import torch

    with warnings.catch_warnings():  # memory maps and Arrow buffers are read-only; we only read them
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(rows)
    if device != "cpu":
        return scorer(x.to(device).float()).float().cpu().numpy().reshape(-1), block
    if x.dtype == torch.float32:
        return scorer(x).float().numpy().reshape(-1), block
    if block.shape != (CPU_BLOCK_ROWS, x.shape[1]):
        block = torch.empty(CPU_BLOCK_ROWS, x.shape[1])
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), CPU_BLOCK_ROWS):
        part = x[start:start + CPU_BLOCK_ROWS]
        widened = block[:len(part)]
        widened.copy_(part)
        out[start:start + len(part)] = scorer(widened).numpy().reshape(-1)
    return out, block


def _write_scores(parts, file: EmbeddingFile, source, columns, embedding_column: str, out_fs, target: str,
                  provenance: str, batch_rows: int) -> dict:
    """One output file: the metadata columns streamed batch by batch, with the scores beside them."""
    scores = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.float32)
    codes = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.uint8)
    batches = _metadata_batches(source, columns, embedding_column, batch_rows, file)
    writer = None
    at = 0
    with atomic_open(out_fs, target, "wb") as fh:
        for meta in batches:
            n = meta.num_rows if meta is not None else len(scores)
            table = _with_scores(meta, scores[at:at + n], codes[at:at + n])
            if writer is None:
                schema = table.schema.with_metadata({PROVENANCE_KEY: provenance.encode()})
                writer = pq.ParquetWriter(fh, schema)
            writer.write_table(table)
            at += n
        if writer is None:  # an empty file
            table = _with_scores(None, scores, codes)
            writer = pq.ParquetWriter(fh, table.schema.with_metadata({PROVENANCE_KEY: provenance.encode()}))
            writer.write_table(table)
        writer.close()
    if at != len(scores):
        raise EmbeddingFileError(f"{source[1]} changed while being scored: {at} metadata rows for {len(scores)} "
                                 f"embeddings in {file.path}")
    reasons, counts = np.unique(codes[codes != 0], return_counts=True)
    return {"rows": len(scores), "errors": {REASONS[int(r)]: int(c) for r, c in zip(reasons, counts)}}


def _metadata_batches(source, columns, embedding_column: str, batch_rows: int, file: EmbeddingFile):
    if source is None:
        yield None
        return
    fs, path = source
    try:
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = [c for c in pf.schema_arrow.names if c != embedding_column] if columns is None else list(columns)
            missing = [c for c in names if c not in pf.schema_arrow.names]
            if missing:
                raise EmbeddingFileError(f"{path} has no column(s) {missing}; columns: {pf.schema_arrow.names}")
            if not names:
                yield None
                return
            empty = True
            for batch in pf.iter_batches(batch_size=batch_rows, columns=names):
                empty = False
                yield pa.Table.from_batches([batch])
            if empty:  # an empty file still gets its columns
                yield pf.schema_arrow.empty_table().select(names)
    except EmbeddingFileError:
        raise
    except Exception as exc:
        raise EmbeddingFileError(f"cannot read metadata of {file.path} from {path}: {type(exc).__name__}: {exc}") from exc


def _with_scores(meta: pa.Table | None, scores: np.ndarray, codes: np.ndarray) -> pa.Table:
    failed = codes != 0
    score_col = pa.array(scores, pa.float32(), mask=failed)
    reasons = np.array([None, *REASONS.values()], dtype=object)[codes]
    error_col = pa.array(reasons, pa.string())
    if meta is None:
        return pa.table({SCORE_COLUMN: score_col, ERROR_COLUMN: error_col})
    meta = meta.drop_columns([c for c in (SCORE_COLUMN, ERROR_COLUMN) if c in meta.column_names])
    return meta.append_column(SCORE_COLUMN, score_col).append_column(ERROR_COLUMN, error_col)
