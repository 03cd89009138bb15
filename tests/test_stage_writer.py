"""ImageWriterStage: every image it is given comes back when its output is read, whatever its id."""
import io

import numpy as np
import pandas as pd
from factory import image_bytes, write_img2dataset
from PIL import Image

from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
from nemo_aesthetic.stages.image.io.image_writer import ImageWriterStage
from nemo_aesthetic.tasks import ImageBatch, ImageObject


def _pixels(seed: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_bytes(seed, (40, 30)))).convert("RGB"))


def test_images_without_ids_or_with_repeated_ids_are_all_written_and_read_back(tmp_path, caplog):
    """Upstream names an id-less image by its position; we do too, and a repeated id gets a
    suffix (logged) instead of two samples under one key, which a reader cannot tell apart."""
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=3, fail_every=0)
    (task,) = FilePartitioningStage(str(tmp_path / "ds"), file_extensions=[".tar"]).process()
    (batch,) = ImageReaderStage(task_batch_size=10, verbose=False).process(task)
    repeated = batch.data[0].image_id
    batch.data += [ImageObject(image_id="", image_data=_pixels(1)), ImageObject(image_id="", image_data=_pixels(2)),
                   ImageObject(image_id=repeated, image_data=_pixels(3))]
    batch = ImageBatch(dataset_name="d", data=batch.data)

    out = ImageWriterStage(str(tmp_path / "out"), images_per_tar=100).process(batch)

    (tar,) = [p for p in out.data if p.endswith(".tar")]
    (parquet,) = [p for p in out.data if p.endswith(".parquet")]
    rows = pd.read_parquet(parquet)
    assert list(rows["image_id"]) == [*(im.image_id for im in batch.data[:3]), "000003", "000004", f"{repeated}-1"]
    assert any("appears twice" in r.getMessage() for r in caplog.records)

    (reread_task,) = FilePartitioningStage(tar, file_extensions=[".tar"]).process()
    (reread,) = ImageReaderStage(task_batch_size=10, verbose=False).process(reread_task)
    assert [im.image_id for im in reread.data] == list(rows["image_id"]) and not reread.errors
    assert reread.data[0].caption == batch.data[0].caption  # the original members, captions kept
    np.testing.assert_allclose(reread.data[5].image_data.astype(int), _pixels(3).astype(int), atol=12)
