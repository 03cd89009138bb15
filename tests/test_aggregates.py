"""Summaries and reports computed on the workers (report.aggregates, report.summary): the same
numbers and grids as over every row gathered on the driver, merged by a tree, reading only the
columns they need; and opening a dataset reads its footers on the workers, once."""
from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_aesthetic import report
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.report import aggregates
from nemo_aesthetic.report.aggregates import ScoreStats, exact_quantiles, reduce_shards, score_summary
from nemo_aesthetic.report.chart import histogram_bins
from nemo_aesthetic.report.summary import QUANTILES, summarise

REASONS = ["no image: img2dataset status failed_to_download (timeout)", "image decode failed: truncated (x.jpg)",
           "no image: img2dataset status failed_to_download (404)"]


def write_scored_shards(root, n_shards=12, rows=40, seed=0, embedding_width=0):
    """Metadata-only shards with scores rounded to 1 decimal (ties within and across shards),
    NaN scores with and without a reason, and ids that sort differently as text and as numbers."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for shard in range(n_shards):
        scores = np.round(rng.normal(5, 1.2, rows), 1)
        failed = rng.random(rows) < 0.15
        scores[failed] = np.nan
        scores[rng.random(rows) < 0.03] = np.nan  # no score, no reason
        errors = [REASONS[rng.integers(len(REASONS))] if f else None for f in failed]
        table = {"key": [f"{shard:03d}{i}" for i in rng.permutation(rows)], "caption": [f"c{shard}-{i}" for i in range(rows)],
                 "aesthetic_score": scores, "error": errors}
        if embedding_width:
            table["image_embedding"] = list(rng.random((rows, embedding_width), dtype=np.float32))
        pq.write_table(pa.table(table), root / f"{shard:05d}.parquet")
        frames.append(pd.DataFrame(table).assign(shard=f"{shard:05d}"))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("gather_limit", [1 << 16, 7, 1])
def test_quantiles_are_exactly_numpys_at_every_radix_level(monkeypatch, gather_limit):
    monkeypatch.setattr(aggregates, "GATHER_LIMIT", gather_limit)  # 1: refine down to single keys
    rng = np.random.default_rng(gather_limit)
    scores = np.concatenate([rng.normal(5, 2, 3000), np.round(rng.normal(5, 2, 2000), 1), [-0.0, 0.0, -3.5, 1e-300]])
    scores[rng.random(len(scores)) < 0.05] = np.nan
    rng.shuffle(scores)
    frame = dd.from_pandas(pd.DataFrame({"aesthetic_score": scores}), npartitions=17, sort=False)
    names = [f"{i:05d}" for i in range(frame.npartitions)]
    with dask.config.set(scheduler="sync"):
        stats = reduce_shards(frame, names, lambda p, n: ScoreStats.of(p), ScoreStats.merge, label="t")
        qs = [0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1]
        got = exact_quantiles(frame, names, stats, qs)
    finite = scores[np.isfinite(scores)]
    assert got == np.quantile(finite, qs).tolist()
    assert (stats.rows, stats.scored, stats.lowest, stats.highest) == (len(scores), len(finite), finite.min(),
                                                                       finite.max())


def test_histogram_bins_follow_numpys_auto_rule_from_aggregates_alone():
    rng = np.random.default_rng(3)
    for trial in range(300):
        scores = rng.normal(5, rng.uniform(0.01, 3), int(rng.integers(1, 2000)))
        if trial % 4 == 0:
            scores = np.round(scores, int(rng.integers(0, 2)))  # zero IQR, coarse ties
        threshold = (None, float(np.median(scores)), float(rng.uniform(-5, 15)))[trial % 3]
        lo, hi = scores.min(), scores.max()
        if threshold is not None:
            lo, hi = min(lo, threshold), max(hi, threshold)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        numpys = len(np.histogram_bin_edges(scores, bins="auto", range=(lo, hi))) - 1
        p75, p25 = np.percentile(scores, [75, 25])
        assert histogram_bins(len(scores), scores.min(), scores.max(), p25, p75, threshold) == (
            min(40, max(10, numpys)), lo, hi)


@pytest.mark.parametrize("top,threshold", [(3, None), (5, 5.0), (20, 6.3), (1, 100.0), (400, None)])
def test_report_numbers_and_grids_equal_those_of_every_row_on_the_driver(tmp_path, top, threshold):
    rows = write_scored_shards(tmp_path / "ds")
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    with dask.config.set(scheduler="sync"):
        data = summarise(dataset, top, threshold)
        everything = report.collect_scores(dataset)
    finite = rows["aesthetic_score"].to_numpy()[np.isfinite(rows["aesthetic_score"].to_numpy())]
    assert list(data.quantiles.values()) == np.quantile(finite, QUANTILES).tolist()
    expected_threshold = float(np.median(finite)) if threshold is None else threshold
    assert data.threshold == expected_threshold
    want = report.select_rows(everything, top, expected_threshold)
    for grid in ("top", "bottom", "around"):
        assert data.selected[grid][["shard", "id", "score"]].values.tolist() == \
            want[grid][["shard", "id", "score"]].values.tolist(), grid
    assert data.passing == int((finite >= expected_threshold).sum())
    counts, lo, hi = data.histogram
    assert counts.tolist() == np.histogram(finite, bins=len(counts), range=(lo, hi))[0].tolist()
    stats = data.stats
    assert stats.error_groups() == report.error_groups(everything["error"])
    assert (stats.rows, stats.errors, stats.shards) == (len(rows), rows["error"].notna().sum(), 12)
    assert stats.unscored_no_error == int((rows["aesthetic_score"].isna() & rows["error"].isna()).sum())


def test_score_summary_of_written_files_matches_numpy_and_merges_as_a_tree(tmp_path):
    import fsspec

    rows = write_scored_shards(tmp_path / "out", n_shards=70, rows=10)
    fs = fsspec.filesystem("file")
    names = [f"{i:05d}" for i in range(70)]
    paths = [str(tmp_path / "out" / f"{n}.parquet") for n in names]
    with dask.config.set(scheduler="sync"):
        stats, quantiles = score_summary(fs, paths, names, [0, 0.1, 0.5, 0.9, 1])
    finite = rows["aesthetic_score"].dropna().to_numpy()
    assert quantiles == np.quantile(finite, [0, 0.1, 0.5, 0.9, 1]).tolist()
    assert stats.error_groups() == report.error_groups(rows["error"])

    # a tree: no task merges more than SPLIT_EVERY results, and the driver gets one value
    from dask.core import get_dependencies

    frame = dd.from_pandas(rows, npartitions=70, sort=False)
    tree = aggregates.shard_reduction(frame, names, lambda part, name: len(part), lambda a, b: a + b, label="t")
    graph = dict(tree.optimize().__dask_graph__())
    assert max(len(get_dependencies(graph, key)) for key in graph) <= aggregates.SPLIT_EVERY < 70
    with dask.config.set(scheduler="sync"):
        assert tree.compute() == len(rows)


def test_report_reads_only_its_columns_not_the_embeddings(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileOpener

    write_scored_shards(tmp_path / "ds", n_shards=4, rows=200, embedding_width=768)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "ds").glob("*.parquet"))
    read = []
    real_read = LocalFileOpener.read

    def counting_read(self, *args, **kwargs):
        data = real_read(self, *args, **kwargs)
        read.append(len(data))
        return data

    monkeypatch.setattr(LocalFileOpener, "read", counting_read)
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    read.clear()
    with dask.config.set(scheduler="sync"):
        summarise(dataset, 5)
        pruned = sum(read)
        read.clear()
        dataset.metadata.compute()  # every column: the counter sees the whole files
    assert sum(read) >= on_disk * 0.9
    passes = 3  # counts, one quantile pass, the threshold pass
    assert pruned < passes * on_disk * 0.1, (pruned, on_disk)


def test_footers_are_read_on_the_workers_once_and_progress_reuses_their_row_count(tmp_path, cpu_client,
                                                                                  monkeypatch):
    from nemo_aesthetic.cli.console import count_rows

    rows = write_scored_shards(tmp_path / "ds", n_shards=6, rows=10)
    on_driver = []
    real = pq.ParquetFile

    def spy(*args, **kwargs):  # this process only: the workers are other processes
        on_driver.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", spy)
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    assert dataset.footer_rows == len(rows) == count_rows(dataset)
    assert on_driver == []  # neither the schema nor the row count read a footer here
    assert list(dataset.metadata.columns) == ["key", "caption", "aesthetic_score", "error"]
    assert len(dataset.metadata.compute()) == len(rows)
