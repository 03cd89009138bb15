"""The stage front on hostile input: ids that would write outside an extraction folder, and a
``.json`` member nested deep enough to exhaust Python's stack. Each test builds its input."""
import io
import json
import logging
import os
import tarfile

import numpy as np
import pandas as pd
from factory import add_member, image_bytes
from PIL import Image

from nemo_aesthetic.backends.dask import stream
from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
from nemo_aesthetic.stages.image.io.image_writer import ImageWriterStage
from nemo_aesthetic.tasks import ImageBatch, ImageObject

HOSTILE_IDS = ["../../x", "/tmp/x", "a/../../y", "..", "sub/ok", "c:\\win", "dot.ted"]


def _extract_everything(tar_path, into):
    """What ``tar -xf`` does: follow the member names (no filter)."""
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="fully_trusted")


def test_writer_never_names_a_member_outside_the_extraction_folder(tmp_path, caplog):
    pixels = [np.asarray(Image.open(io.BytesIO(image_bytes(i, (32, 24))))) for i in range(len(HOSTILE_IDS))]
    batch = ImageBatch(dataset_name="d", data=[ImageObject(image_id=i, image_path=f"in/{n}", image_data=p)
                                               for n, (i, p) in enumerate(zip(HOSTILE_IDS, pixels))])
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        out = ImageWriterStage(str(tmp_path / "out"), images_per_tar=100).process(batch)
    (tar_path,) = [p for p in out.data if p.endswith(".tar")]
    (parquet,) = [p for p in out.data if p.endswith(".parquet")]

    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        for member in tar.getmembers():  # the standard library's own check for safe extraction
            tarfile.data_filter(member, str(tmp_path / "x"))
    assert all(not n.startswith("/") and ".." not in n.split("/") and "\\" not in n for n in names), names
    assert "sub/ok.jpg" in names  # a plain relative key is written as it is
    assert any("not a safe tar member name" in r.getMessage() for r in caplog.records)

    extract = tmp_path / "extract" / "here"
    extract.mkdir(parents=True)
    _extract_everything(tar_path, extract)
    outside = [p for p in (tmp_path / "extract").rglob("*") if p.is_file() and extract not in p.parents]
    assert outside == [] and not (tmp_path / "x.jpg").exists()

    # every image comes back, under the key the Parquet names, with its own pixels
    (task,) = FilePartitioningStage(tar_path, file_extensions=[".tar"]).process()
    (reread,) = ImageReaderStage(task_batch_size=100, verbose=False).process(task)
    rows = pd.read_parquet(parquet)
    assert [im.image_id for im in reread.data] == list(rows["image_id"]) and len(rows) == len(HOSTILE_IDS)
    for im, expected in zip(reread.data, pixels):
        np.testing.assert_allclose(im.image_data.astype(int), expected.astype(int), atol=16)


def test_hostile_member_names_read_from_a_tar_are_written_safely(tmp_path):
    """The ids come from an input tar's member names (``../../x.jpg``), as a crawled tar may have."""
    src = tmp_path / "in" / "00000.tar"
    src.parent.mkdir()
    with tarfile.open(src, "w") as tar:
        for i, key in enumerate(["../../evil", "/abs/evil", "fine"]):
            add_member(tar, f"{key}.jpg", image_bytes(i, (32, 24)))
            add_member(tar, f"{key}.txt", f"caption {i}".encode())
    (task,) = FilePartitioningStage(str(src.parent), file_extensions=[".tar"]).process()
    (batch,) = ImageReaderStage(task_batch_size=10, verbose=False).process(task)
    assert [im.image_id for im in batch.data] == ["../../evil", "/abs/evil", "fine"]
    out = ImageWriterStage(str(tmp_path / "out"), images_per_tar=10).process(batch)
    (tar_path,) = [p for p in out.data if p.endswith(".tar")]
    extract = tmp_path / "x" / "y"
    extract.mkdir(parents=True)
    _extract_everything(tar_path, extract)
    assert sorted(p.parent == extract for p in (tmp_path / "x").rglob("*") if p.is_file()) == [True] * 6
    # the original bytes and captions, under the safe keys
    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert members["fine.jpg"] == image_bytes(2, (32, 24)) and members["fine.txt"] == b"caption 2"
    assert members["%2E%2E%2F%2E%2E%2Fevil.jpg"] == image_bytes(0, (32, 24))


def test_deeply_nested_json_member_loses_only_its_metadata_not_the_shard(tmp_path, caplog):
    """200 KB of ``[`` in one sample's .json made json.loads raise RecursionError (not a
    ValueError), which failed the whole stage pipeline and lost the shard's other samples."""
    src = tmp_path / "in" / "00000.tar"
    src.parent.mkdir()
    deep = b"[" * 200_000
    nested_ok = json.dumps({"caption": "fine", "a": [[[1]]]}).encode()
    too_deep_but_valid = (b"[" * 500) + (b"]" * 500)
    with tarfile.open(src, "w") as tar:
        for i, meta in enumerate([nested_ok, deep, too_deep_but_valid, nested_ok]):
            add_member(tar, f"{i:04d}.jpg", image_bytes(i, (32, 24)))
            add_member(tar, f"{i:04d}.json", meta)
    (task,) = FilePartitioningStage(str(src.parent), file_extensions=[".tar"]).process()
    writer = ImageWriterStage(str(tmp_path / "out"), images_per_tar=10)
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        (written,) = list(stream([ImageReaderStage(task_batch_size=10, verbose=False), writer], [task]))
    (parquet,) = [p for p in written.data if p.endswith(".parquet")]
    rows = pd.read_parquet(parquet)
    assert list(rows["image_id"]) == ["0000", "0001", "0002", "0003"]
    assert rows["caption"].tolist()[::3] == ["fine", "fine"] and rows["caption"][1:3].isna().all()
    assert any("0001" in r.getMessage() and "RecursionError" in r.getMessage() for r in caplog.records)
    # the unreadable .json members are copied through unchanged
    (tar_path,) = [p for p in written.data if p.endswith(".tar")]
    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert members["0001.json"] == deep and members["0002.json"] == too_deep_but_valid
    assert os.path.getsize(parquet) < 100_000  # the 200 KB are not repeated into the metadata column
