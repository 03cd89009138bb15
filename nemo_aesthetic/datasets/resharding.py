"""``to_webdataset``'s work: cut the kept rows into output shards and write each one on a worker.

The plan (:func:`plan_output_shards`) needs only each input shard's count of kept rows, a small
aggregate computed first; each output shard's task (:func:`write_output_shard`, laid out by
:func:`output_shard_writes`) gets the input partitions and slices it writes and nothing else, so the
graph grows linearly with the shards. The kept rows are not kept in memory between the two passes:
the writes compute their partitions again (re-reading the Parquet), unless the metadata comes
fresh from a model (:func:`~nemo_aesthetic.engine.partitions.computed_once`).
"""
from __future__ import annotations

import logging
import math
import posixpath
from typing import NamedTuple

import pandas as pd
import pyarrow.parquet as pq

from nemo_aesthetic import frames
from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.datasets import provenance
from nemo_aesthetic.datasets.shard_writer import TarShardWriter
from nemo_aesthetic.datasets.shards import KeyIndex, Shard, ShardReadError
from nemo_aesthetic.engine.partitions import map_groups
from nemo_aesthetic.retrying import with_retries

logger = logging.getLogger(__name__)


def plan_output_shards(counts: list[int], samples_per_shard: int) -> list[list[tuple[int, int, int]]]:
    """Cut the kept rows (``counts[i]`` in partition i) into output shards of fixed size.

    Returns, per output shard, the ``(partition, start, stop)`` slices it takes: kept samples
    ``start..stop-1`` of partition i's tar, in tar order.
    """
    plan, current, room = [], [], samples_per_shard
    for part, count in enumerate(counts):
        start = 0
        while start < count:
            take = min(room, count - start)
            current.append((part, start, start + take))
            start += take
            room -= take
            if room == 0:
                plan.append(current)
                current, room = [], samples_per_shard
    if current:
        plan.append(current)
    return plan


class OutputShard(NamedTuple):
    """What one output shard's task carries: its name, its first new id, and per input shard it
    takes from, the shard and the ``(start, stop, last)`` slice of its kept rows."""

    name: str
    id_base: int
    in_shards: list[Shard]
    slices: list[tuple[int, int, bool]]


def output_shard_writes(kept, shards: list[Shard], counts: list[int], samples_per_shard: int, max_shards: int,
                        skip: set, fs_in, fs_out, out_root: str, id_col: str, old_id_col: str | None):
    """``(number of output shards, a Series of one summary dict per output shard written)``.

    ``kept`` holds partition i's kept rows (``counts[i]`` of them) for ``shards[i]``; output shards
    named in ``skip`` are left out (a resumed run). One task per output shard, depending on its own
    input partitions only.
    """
    plan = plan_output_shards(counts, samples_per_shard)
    if len(plan) > 10**max_shards:
        raise ValueError(f"{len(plan)} output shards do not fit in max_shards={max_shards} digits")
    id_step = 10 ** math.ceil(math.log10(samples_per_shard))
    id_width = max_shards + math.ceil(math.log10(samples_per_shard))
    groups, jobs = [], []
    for j, slices in enumerate(plan):
        name = f"{j:0{max_shards}d}"
        if name not in skip:
            groups.append([i for i, _, _ in slices])
            jobs.append(OutputShard(name, j * id_step, [shards[i] for i, _, _ in slices],
                                    [(start, stop, stop == counts[i]) for i, start, stop in slices]))
    writes = map_groups(_write_output_shard_task, kept, groups, jobs, fs_in, fs_out, out_root, id_width, id_col,
                        old_id_col, meta=pd.Series([], dtype=object), label="write-output-shard")
    return len(plan), writes


def _write_output_shard_task(parts, job: OutputShard, fs_in, fs_out, out_root, id_width, id_col, old_id_col):
    return pd.Series([write_output_shard(fs_in, job.in_shards, job.slices, parts, fs_out, out_root, job.name,
                                         job.id_base, id_width, id_col, old_id_col)], dtype=object)


def write_output_shard(fs_in, in_shards, slices, parts, fs_out, out_root, name, id_base, id_width,
                        id_col, old_id_col) -> dict:
    """Write output shard ``name``: for each ``(start, stop, last)`` slice of an input shard, the kept
    samples number ``start..stop-1`` of that shard's tar, counted in the tar's own order (``last``:
    the slice ends with the shard's last kept row).

    Counting in tar order lets a slice stop reading its tar as soon as it has its samples, so an
    input tar split over two output shards is read once and a half, not twice. Every task that
    reads a tar counts the same way (first complete sample of each kept key), so slices never
    overlap. The task holding a tar's last slice reads to its end and reports the kept rows that
    had no sample there.
    """
    from nemo_aesthetic.engine.sources import shard_samples  # (the engine imports torch: on the worker only)

    written_rows, missing = [], []
    next_index = 0
    with TarShardWriter(fs_out, posixpath.join(out_root, f"{name}.tar")) as writer:
        for shard, (start, stop, last_slice), part in zip(in_shards, slices, parts):
            ids = frames.column_values(part[id_col])
            index = KeyIndex(ids)
            counted: set[int] = set()
            new_ids: dict[int, str] = {}
            if shard.tar is not None or shard.source is not None:  # a tar, or a folder/Parquet source
                try:
                    for sample in shard_samples(shard, fs_in):
                        pos = index.position(sample.key)
                        if pos is None or not sample.complete or sample.refused:  # cut off or unread: not copied
                            continue
                        if pos in counted:  # the key again, further on: one row, one sample
                            if last_slice:
                                logger.warning("to_webdataset: key %s appears twice in %s; only its first "
                                               "sample is written", sample.key, shard.tar)
                            continue
                        rank = len(counted)
                        counted.add(pos)
                        if start <= rank < stop:
                            new_ids[pos] = f"{id_base + next_index:0{id_width}d}"
                            next_index += 1
                            writer.write(new_ids[pos], sample)
                        if rank + 1 >= stop and not last_slice:
                            break  # this slice is complete; later samples belong to later shards
                except ShardReadError as exc:
                    if last_slice:
                        logger.warning("to_webdataset: %s; its remaining kept rows are not written", exc)
            positions = sorted(new_ids, key=new_ids.get)
            out = part.iloc[positions].copy()
            if old_id_col:
                out[old_id_col] = out[id_col]
            out[id_col] = [new_ids[p] for p in positions]
            out[id_col] = out[id_col].astype(str)  # (an empty slice would make it float: one schema per output)
            written_rows.append(out)
            if last_slice:
                missing += [(shard.name, k) for p, k in enumerate(ids) if p not in counted]
    frame = frames.concat(written_rows)  # every output shard has at least one slice
    write_partition(frame.reset_index(drop=True), posixpath.join(out_root, f"{name}.parquet"), fs_out, None)
    return {"written": next_index, "missing": missing}


def write_partition(df, path: str, fs, columns: list | None, extra: dict | None = None) -> pd.Series:
    """Write one partition to ``path`` atomically (retried on a transient error); its row count, as a
    one-row Series (summed by the caller)."""
    if columns is not None:
        df = df[columns]
    table = provenance.with_file_metadata(frames.frame_to_arrow(df), extra or {})

    def write():
        with atomic_open(fs, path, "wb") as f:
            pq.write_table(table, f)

    with_retries(write, what=f"writing {path}")
    return pd.Series([len(df)], dtype="int64")
