"""Property tests (hypothesis) over random small datasets written to disk.

Each example writes a fresh dataset in its own temporary directory: 1-4 shards of 0-8 rows,
random failed downloads (a row with no tar member), random extra members (``.cls``, ``.json``,
``.txt``, ``.npy``), random key styles (img2dataset's zero-padded strings, strings like ``a_1``,
or an integer id column matched to zero-padded tar keys), rows and tar members in random
(completion) order, and a random boolean filter with nulls. Then:

* ``to_webdataset`` (random ``samples_per_shard`` 1-7) writes exactly the kept rows that have a
  sample; Parquet rows and tar samples match one to one by id; every member's bytes equal the
  input member of the same old id (``old_id_col``); re-reading the output with
  ``from_webdataset`` gives the kept rows' metadata unchanged;
* the embedder gives every input row exactly once, scored exactly when its sample has a
  decodable image, flagged with a reason otherwise.

Examples are derandomized (same examples on every run, no example database), so CI is
deterministic. Dask runs on the synchronous scheduler.
"""
from __future__ import annotations

import os
import tarfile
import tempfile

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nemo_aesthetic import frames
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXTRA_EXTENSIONS = ("cls", "json", "txt", "npy")


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


# ----------------------------------------------------------------------------- random datasets
def tar_key(style: str, shard: int, index: int) -> str:
    return f"{chr(ord('a') + shard)}_{index}" if style == "string" else f"{shard:05d}{index:04d}"


def id_value(style: str, shard: int, index: int):
    return shard * 10_000 + index if style == "int" else tar_key(style, shard, index)


@st.composite
def datasets(draw):
    """``{"style", "shards": [{"rows": [...], "tar_order": [...], "row_order": [...]}]}``.

    A row: ``index``, ``failed`` (no tar member), ``keep`` (True/False/None), ``members``
    (``{ext: bytes}``, the image as ``jpg`` plus extras), ``caption`` (str or None), ``n`` (int).
    """
    style = draw(st.sampled_from(["padded", "string", "int"]))
    shards = []
    for _ in range(draw(st.integers(1, 4))):
        rows = []
        for index in range(draw(st.integers(0, 8))):
            failed = draw(st.integers(0, 3)) == 0
            members = {"jpg": draw(st.binary(max_size=48))}
            for ext in draw(st.lists(st.sampled_from(EXTRA_EXTENSIONS), unique=True, max_size=3)):
                members[ext] = draw(st.binary(max_size=16))
            rows.append({"index": index, "failed": failed, "members": None if failed else members,
                         "keep": draw(st.sampled_from([True, True, False, None])),
                         "caption": draw(st.one_of(st.none(), st.text(max_size=12))),
                         "n": draw(st.integers(-(2**40), 2**40))})
        shards.append({"rows": rows,
                       "tar_order": draw(st.permutations(range(len(rows)))),
                       "row_order": draw(st.permutations(range(len(rows))))})
    return {"style": style, "shards": shards}


def schema(style: str) -> pa.Schema:
    return pa.schema([("key", pa.int64() if style == "int" else pa.string()), ("caption", pa.string()),
                      ("status", pa.string()), ("keep", pa.bool_()), ("n", pa.int64())])


def write_dataset(root: str, spec: dict) -> dict:
    """Write the shards; returns ``{old id: (shard name, row dict, tar key)}``."""
    os.makedirs(root, exist_ok=True)
    style, by_id = spec["style"], {}
    for s, shard in enumerate(spec["shards"]):
        name = f"{s:05d}"
        rows = shard["rows"]
        with tarfile.open(os.path.join(root, f"{name}.tar"), "w") as tar:
            for i in shard["tar_order"]:
                for ext, data in (rows[i]["members"] or {}).items():
                    add_member(tar, f"{tar_key(style, s, rows[i]['index'])}.{ext}", data)
        table_rows = []
        for i in shard["row_order"]:
            r = rows[i]
            ident = id_value(style, s, r["index"])
            table_rows.append({"key": ident, "caption": r["caption"],
                               "status": "failed_to_download" if r["failed"] else "success",
                               "keep": r["keep"], "n": r["n"]})
            by_id[ident] = (name, table_rows[-1], tar_key(style, s, r["index"]), r["members"])
        pq.write_table(pa.Table.from_pylist(table_rows, schema=schema(style)), os.path.join(root, f"{name}.parquet"))
    return by_id


def read_samples(tar_path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}``; asserts each key's members are contiguous and never repeated."""
    out: dict[str, dict[str, bytes]] = {}
    last = None
    with tarfile.open(tar_path) as tar:
        for m in tar:
            assert m.isfile()
            key, ext = m.name.split(".", 1)
            if key != last:
                assert key not in out, f"{key} is not contiguous in {tar_path}"
                out[key] = {}
                last = key
            assert ext not in out[key], f"{m.name} twice in {tar_path}"
            out[key][ext] = tar.extractfile(m).read()
    return out


def same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == b)


# ----------------------------------------------------------------------------- to_webdataset
@settings(max_examples=25, **PROPERTY_SETTINGS)
@given(spec=datasets(), samples_per_shard=st.integers(1, 7))
def test_to_webdataset_writes_exactly_the_kept_samples(spec, samples_per_shard):
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        by_id = write_dataset(src, spec)
        kept = {i for i, (_, r, _, _) in by_id.items() if r["keep"] is True}
        written = {i for i in kept if by_id[i][3] is not None}
        event(f"{spec['style']} ids, {len(spec['shards'])} shard(s)")
        event(f"rows written: {'0' if not written else '1-3' if len(written) < 4 else '4+'}")

        ds = ImageTextPairDataset.from_webdataset(src)
        summary = ds.to_webdataset(out, "keep", samples_per_shard=samples_per_shard, old_id_col="old_key")

        assert summary["kept_rows"] == len(kept)
        assert summary["written"] == len(written)
        assert sorted(map(str, (i for _, i in summary["missing"]))) == sorted(map(str, kept - written))
        assert all(by_id[i][0] == shard for shard, i in summary["missing"])

        names = sorted(os.listdir(out))
        tars = [n for n in names if n.endswith(".tar")]
        assert names == sorted(tars + [n[:-4] + ".parquet" for n in tars])  # tar + parquet, nothing else
        assert summary["shards"] == len(tars)
        assert (len(tars) >= 1) == bool(kept)  # nothing kept: nothing written, no empty tar

        seen_old, new_ids, frames_out = set(), set(), []
        for tar_name in tars:
            meta = pd.read_parquet(os.path.join(out, tar_name[:-4] + ".parquet"))
            samples = read_samples(os.path.join(out, tar_name))
            assert len(meta) <= samples_per_shard
            ids = meta["key"].tolist()
            assert len(set(ids)) == len(ids)
            assert sorted(ids) == sorted(samples)  # parquet rows <-> tar samples, one to one by id
            for new, old in zip(meta["key"], meta["old_key"]):
                old = int(old) if spec["style"] == "int" else old
                assert old in written, old
                assert old not in seen_old, f"{old} written twice"
                seen_old.add(old)
                assert new not in new_ids
                new_ids.add(new)
                assert samples[new] == by_id[old][3]  # every member, byte for byte, no other member
            frames_out.append(meta)
        assert seen_old == written

        # metadata of each written row: the input row's values (the id is new, the old one kept)
        got = pd.concat(frames_out, ignore_index=True) if frames_out else pd.DataFrame()
        for _, r in got.iterrows():
            old = int(r["old_key"]) if spec["style"] == "int" else r["old_key"]
            source = by_id[old][1]
            for col in ("caption", "status", "keep", "n"):
                value = None if pd.isna(r[col]) else r[col]
                assert same(value, source[col]), (col, value, source[col])

        # re-reading the output gives the same metadata
        if not tars:
            return  # nothing kept: nothing written, nothing to re-read
        again = ImageTextPairDataset.from_webdataset(out).metadata.compute()
        assert list(again.columns) == ["key", "caption", "status", "keep", "n", "old_key"]
        assert len(again) == len(written)
        if len(got):
            expected = got.sort_values("key").reset_index(drop=True)
            again = again.sort_values("key").reset_index(drop=True)
            for col in expected.columns:
                assert [None if pd.isna(v) else v for v in again[col]] == \
                       [None if pd.isna(v) else v for v in expected[col]], col


# ----------------------------------------------------------------------------- embedder
@pytest.fixture(scope="module")
def embedder(tmp_path_factory, aesthetic_weights):
    import timm

    torch.manual_seed(99)
    model = timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS)
    path = tmp_path_factory.mktemp("tiny_properties") / "tiny_vit.pth"
    torch.save(model.state_dict(), path)
    return TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(path), batch_size=3,
                             num_threads_per_worker=2, classifiers=[AestheticClassifier(model_path=aesthetic_weights)])


#: (kind, image bytes or None, expected reason or None for scored)
SAMPLE_KINDS = {
    "good": lambda seed: image_bytes(seed, (24, 16)),
    "good_png": lambda seed: image_bytes(seed, (16, 24), fmt="PNG"),
    "garbage": lambda seed: bytes([seed % 256]) * 40,
    "empty": lambda seed: b"",
    "no_image": None,  # a sample with .txt only
    "failed": None,  # no tar member at all
}
REASONS = {"garbage": "not an image PIL can read", "empty": "0 bytes", "no_image": "sample has no image member",
           "failed": "img2dataset status failed_to_download"}


@settings(max_examples=10, **PROPERTY_SETTINGS)
@given(shards=st.lists(st.lists(st.sampled_from(sorted(SAMPLE_KINDS)), max_size=8), min_size=1, max_size=4),
       strays=st.lists(st.integers(0, 3), max_size=3), seed=st.integers(0, 1000))
def test_embedder_gives_every_row_once_scored_or_with_a_reason(embedder, shards, strays, seed):
    """Random shards of good / undecodable / empty / image-less / failed rows, plus stray tar
    samples that have no row: rows in == rows out, each scored exactly when it should be."""
    with tempfile.TemporaryDirectory() as tmp:
        expect, kind_of = {}, {}
        rng = np.random.default_rng(seed)
        for s, kinds in enumerate(shards):
            rows, members = [], []
            for i, kind in enumerate(kinds):
                key = f"{s:05d}{i:04d}"
                rows.append({"key": key, "caption": kind,
                             "status": "failed_to_download" if kind == "failed" else "success"})
                expect[key] = REASONS.get(kind)
                kind_of[key] = kind
                if kind == "failed":
                    continue
                if SAMPLE_KINDS[kind] is not None:
                    members.append((f"{key}.jpg", SAMPLE_KINDS[kind](seed + i)))
                members.append((f"{key}.txt", kind.encode()))
            for j, shard_index in enumerate(strays):
                if shard_index == s:
                    members.append((f"{s:05d}9{j:03d}", image_bytes(j)))  # no extension: skipped
                    members.append((f"{s:05d}8{j:03d}.jpg", image_bytes(j)))  # no metadata row
            order = rng.permutation(len(rows))
            with tarfile.open(os.path.join(tmp, f"{s:05d}.tar"), "w") as tar:
                for name, data in members:
                    add_member(tar, name, data)
            table = pa.Table.from_pylist([rows[k] for k in order], schema=pa.schema(
                [("key", pa.string()), ("caption", pa.string()), ("status", pa.string())]))
            pq.write_table(table, os.path.join(tmp, f"{s:05d}.parquet"))

        event(f"rows: {'0' if not expect else '1-5' if len(expect) < 6 else '6+'}, strays: {len(strays)}")
        df = embedder(ImageTextPairDataset.from_webdataset(tmp)).metadata.compute()
        assert sorted(df["key"]) == sorted(expect)  # every row once, no stray row
        _, valid = frames.embeddings_to_matrix(df["image_embedding"])
        assert (valid == df["aesthetic_score"].notna().to_numpy()).all()
        assert (valid == df["error"].isna().to_numpy()).all()
        for key, caption, reason in zip(df["key"], df["caption"], df["error"].tolist()):
            assert caption == kind_of[key]  # the row kept its own metadata
            if expect[key] is None:
                assert pd.isna(reason), (key, reason)
            else:
                assert isinstance(reason, str) and expect[key] in reason, (key, expect[key], reason)
