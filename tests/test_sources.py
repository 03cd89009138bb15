"""Every layout a curator keeps images in: a folder of image files, img2dataset's Parquet output
(written by the real img2dataset over images served on 127.0.0.1), a Hugging Face export (written
by the real ``datasets``), and tars with png/webp members. Each is scored through the legacy front
and the CLI: every input row comes out, scored or with its reason, and the scores are those of the
same bytes read from tars."""
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes
from test_cli import TINY_JSON, run_cli

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.engine.sources import LayoutError, detect_layout
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

ODD_IMAGES = 14  # the image files of ../shared/testdata/odd_images (LICENSE.Pillow is not one)
BAD_ODD_IMAGES = {"broken.png": "not an image PIL can read", "truncated_jpeg.jpg": "truncated"}


def score(dataset, tiny_checkpoint, aesthetic_weights) -> pd.DataFrame:
    embedder = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint, batch_size=4,
                                 num_threads_per_worker=2,
                                 classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    with dask.config.set(scheduler="sync"):
        return embedder(dataset).metadata.compute().reset_index(drop=True)


def tar_scores(tmp_path, images: list[bytes], exts: list[str], tiny_checkpoint, aesthetic_weights) -> np.ndarray:
    """The scores of the same bytes read from a WebDataset shard (the reference every layout meets)."""
    root = tmp_path / "as_tars"
    root.mkdir()
    keys = [f"{i:04d}" for i in range(len(images))]
    with tarfile.open(root / "00000.tar", "w") as tar:
        for key, data, ext in zip(keys, images, exts):
            add_member(tar, f"{key}.{ext}", data)
    pd.DataFrame({"key": keys}).to_parquet(root / "00000.parquet")
    df = score(ImageTextPairDataset.from_webdataset(str(root)), tiny_checkpoint, aesthetic_weights)
    return df.set_index("key").loc[keys, "aesthetic_score"].to_numpy(float, na_value=np.nan)


def odd_files(testdata) -> list[Path]:
    files = sorted(p for p in (testdata / "odd_images").iterdir() if p.suffix.lower() != ".pillow")
    assert len(files) == ODD_IMAGES
    return files


def assert_odd_rows(df, keys):
    assert len(df) == ODD_IMAGES and list(keys) == sorted(keys)
    for key, error, value in zip(keys, df["error"], df["aesthetic_score"]):
        bad = BAD_ODD_IMAGES.get(os.path.basename(key))
        assert (bad in error and pd.isna(value)) if bad else (pd.isna(error) and np.isfinite(value)), (key, error)


# --------------------------------------------------------------------------- folders
def test_image_folder_every_file_a_row_scored_as_from_tars(tmp_path, testdata, tiny_checkpoint, aesthetic_weights):
    files = odd_files(testdata)
    dataset = ImageTextPairDataset.from_path(str(testdata / "odd_images"))
    assert dataset.layout == "folder" and dataset.id_col == "key"
    df = score(dataset, tiny_checkpoint, aesthetic_weights)
    assert list(df["key"]) == [p.name for p in files] and list(df["path"]) == [str(p) for p in files]
    assert_odd_rows(df, df["key"])
    reference = tar_scores(tmp_path, [p.read_bytes() for p in files], [p.suffix[1:] for p in files],
                           tiny_checkpoint, aesthetic_weights)
    np.testing.assert_allclose(df["aesthetic_score"].to_numpy(float, na_value=np.nan), reference, atol=1e-6,
                               equal_nan=True)


def test_hostile_folder_nothing_outside_read_every_file_accounted_for(tmp_path, tiny_checkpoint, aesthetic_weights):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(image_bytes(99))
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.jpg").write_bytes(image_bytes(1))
    (root / "sub" / "b.PNG").write_bytes(image_bytes(2, fmt="PNG"))
    (root / "sub" / "b.txt").write_text("a caption for b")
    (root / "sub" / "deeper" / "c.webp").write_bytes(image_bytes(3, fmt="WEBP"))
    (root / "notes.jpg").write_text("this is text, not a JPEG")
    (root / "readme.md").write_text("not an image name: not a row")
    (root / ".hidden.jpg").write_bytes(image_bytes(4))
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "loop1.jpg").symlink_to(root / "loop2.jpg")
    (root / "loop2.jpg").symlink_to(root / "loop1.jpg")
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "inside.jpg").symlink_to(root / "a.jpg")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    dataset = ImageTextPairDataset.from_image_folder(str(root), files_per_partition=3)
    assert len(dataset.shards) == 5  # top level: 8 files in 3 partitions; sub and sub/deeper one each
    df = score(dataset, tiny_checkpoint, aesthetic_weights).set_index("key")
    expected = ["a.jpg", "dangling.jpg", "escape.jpg", "fifo.jpg", "inside.jpg", "loop1.jpg", "loop2.jpg",
                "notes.jpg", "sub/b.PNG", "sub/deeper/c.webp"]
    assert list(df.index) == expected
    scored = ["a.jpg", "inside.jpg", "sub/b.PNG", "sub/deeper/c.webp"]
    assert df.loc[scored, "error"].isna().all() and df.loc[scored, "aesthetic_score"].notna().all()
    assert df.loc["a.jpg", "aesthetic_score"] == df.loc["inside.jpg", "aesthetic_score"]
    assert "outside the folder" in df.loc["escape.jpg", "error"]
    assert all("loops or dangles" in df.loc[k, "error"] for k in ("loop1.jpg", "loop2.jpg", "dangling.jpg"))
    assert "not a regular file" in df.loc["fifo.jpg", "error"]
    assert "not an image" in df.loc["notes.jpg", "error"]
    assert df.loc["sub/b.PNG", "caption"] == "a caption for b" and pd.isna(df.loc["a.jpg", "caption"])
    if os.geteuid() != 0:  # root reads anything
        (root / "a.jpg").chmod(0)
        df = score(ImageTextPairDataset.from_image_folder(str(root)), tiny_checkpoint, aesthetic_weights)
        assert "cannot read file: PermissionError" in df.set_index("key").loc["a.jpg", "error"]


def test_cli_scores_reports_and_filters_a_folder(tmp_path, testdata, tiny_checkpoint, aesthetic_weights):
    out, kept = tmp_path / "scored", tmp_path / "kept"
    common = ["--model", TINY_MODEL, "--clip-checkpoint", tiny_checkpoint, "--model-kwargs", TINY_JSON,
              "--aesthetic-weights", aesthetic_weights]
    refused = run_cli("score", testdata / "odd_images", "--cluster", "sync", *common)
    assert refused.returncode == 2 and "--out" in refused.stderr and "Traceback" not in refused.stderr
    proc = run_cli("score", testdata / "odd_images", "--out", out, "--cluster", "sync", "--batch-size", "4", *common)
    assert proc.returncode == 0, proc.stderr
    assert f"rows: {ODD_IMAGES}   scored: {ODD_IMAGES - 2}   errors: 2" in proc.stdout
    assert sorted(os.listdir(out)) == ["00000.parquet"] and sorted(os.listdir(testdata / "odd_images")) == \
        sorted([p.name for p in odd_files(testdata)] + ["LICENSE.Pillow"])
    df = pd.read_parquet(out / "00000.parquet")
    assert_odd_rows(df, df["key"])
    assert all(Path(p).read_bytes() for p in df["path"])  # the path leads back to the image

    report = run_cli("report", out, "--out", tmp_path / "report.html")
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report.html").read_text()
    assert "could not be read" not in report.stdout and html.count("data:image/jpeg;base64,") >= ODD_IMAGES - 2

    filt = run_cli("filter", out, "--top-k", "5", "--out", kept)
    assert filt.returncode == 0, filt.stderr
    best = df.sort_values("aesthetic_score", ascending=False, kind="stable").head(5)
    with tarfile.open(kept / "00000.tar") as tar:
        members = [tar.extractfile(m).read() for m in tar]
    written = pd.read_parquet(kept / "00000.parquet")
    assert sorted(written["path"]) == sorted(best["path"])  # each kept row still says where its image was
    assert sorted(members) == sorted(Path(p).read_bytes() for p in best["path"])  # original bytes


# --------------------------------------------------------------------------- Parquet
def test_hugging_face_parquet_written_by_datasets(tmp_path, testdata, tiny_checkpoint, aesthetic_weights):
    import datasets  # the test extra installs it
    files = odd_files(testdata)
    hf = datasets.Dataset.from_dict({
        "image": [{"bytes": p.read_bytes(), "path": p.name} for p in files],
        "text": [f"a picture called {p.stem}" for p in files],
    }).cast_column("image", datasets.Image())
    (tmp_path / "hf" / "data").mkdir(parents=True)
    hf.to_parquet(str(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet"))
    assert detect_layout(str(tmp_path / "hf")) == "parquet"
    df = score(ImageTextPairDataset.from_path(str(tmp_path / "hf")), tiny_checkpoint, aesthetic_weights)
    assert list(df["image_path"]) == [p.name for p in files] and list(df["key"]) == [f"{i:09d}" for i in range(14)]
    assert list(df["text"]) == list(hf["text"])
    assert_odd_rows(df, df["image_path"])
    reference = tar_scores(tmp_path, [p.read_bytes() for p in files], [p.suffix[1:] for p in files],
                           tiny_checkpoint, aesthetic_weights)
    np.testing.assert_allclose(df["aesthetic_score"].to_numpy(float, na_value=np.nan), reference, atol=1e-6,
                               equal_nan=True)

    # images stored by path only: the file named is not opened, each row says so
    by_path = datasets.Dataset.from_dict({"image": [str(p) for p in files[:3]]}).cast_column("image", datasets.Image())
    by_path.to_parquet(str(tmp_path / "paths.parquet"))
    df = score(ImageTextPairDataset.from_parquet(str(tmp_path / "paths.parquet")), tiny_checkpoint, aesthetic_weights)
    assert len(df) == 3 and df["error"].str.contains("which is not read").all()


IMG2DATASET_RUN = textwrap.dedent("""
    import functools, http.server, os, sys, threading
    from img2dataset import download

    def main(www, out, n):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=www)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        names = sorted(os.listdir(www))[:n] + ["missing.jpg"]
        import pandas as pd
        pd.DataFrame({"url": [f"{base}/{name}" for name in names],
                      "caption": [f"caption of {name}" for name in names]}).to_parquet(out + ".urls.parquet")
        download(url_list=out + ".urls.parquet", input_format="parquet", url_col="url", caption_col="caption",
                 output_format="parquet", output_folder=out, processes_count=1, thread_count=4,
                 resize_mode="no", disable_all_reencoding=True, number_sample_per_shard=5, retries=0,
                 timeout=10, enable_wandb=False)
        server.shutdown()

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """)


def test_img2dataset_parquet_output_scored_by_the_cli(tmp_path, tiny_checkpoint, aesthetic_weights):
    import img2dataset  # noqa: F401  (.ci/run installs it, --no-deps: it pins pandas<3)
    www = tmp_path / "www"
    www.mkdir()
    for i in range(6):
        (www / f"{i}.{'png' if i == 5 else 'jpg'}").write_bytes(image_bytes(i, fmt="PNG" if i == 5 else "JPEG"))
    (www / "3.jpg").write_bytes(b"<html>not found</html>")  # served fine, but not an image
    script = tmp_path / "run_img2dataset.py"
    script.write_text(IMG2DATASET_RUN)
    out = tmp_path / "i2d"
    proc = subprocess.run([sys.executable, str(script), str(www), str(out), "6"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))], ignore_index=True)
    assert len(written) == 7 and "jpg" in written.columns  # img2dataset's own layout

    scored = tmp_path / "scored"
    run = run_cli("score", out, "--out", scored, "--cluster", "sync", "--model", TINY_MODEL, "--clip-checkpoint",
                  tiny_checkpoint, "--model-kwargs", TINY_JSON, "--aesthetic-weights", aesthetic_weights)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in scored.iterdir()) == sorted(p.name for p in out.glob("*.parquet"))
    df = pd.concat([pd.read_parquet(scored / p.name) for p in sorted(out.glob("*.parquet"))], ignore_index=True)
    assert len(df) == len(written) and sorted(df["key"]) == sorted(written["key"])  # rows in = rows out
    assert "jpg" not in df.columns and {"url", "caption", "status", "aesthetic_score", "error"} <= set(df.columns)
    df = df.set_index("url")
    by_name = {u.rsplit("/", 1)[1]: u for u in df.index}
    assert "img2dataset status failed_to_download" in df.loc[by_name["missing.jpg"], "error"]
    if df.loc[by_name["3.jpg"], "status"] == "success":  # kept as served (no re-encoding)
        assert "not an image" in df.loc[by_name["3.jpg"], "error"]
    good = [by_name[n] for n in ("0.jpg", "1.jpg", "2.jpg", "4.jpg", "5.png")]
    assert df.loc[good, "error"].isna().all()
    images = written.set_index("url").loc[good, "jpg"].tolist()
    reference = tar_scores(tmp_path, images, ["jpg"] * 4 + ["png"], tiny_checkpoint, aesthetic_weights)
    np.testing.assert_allclose(df.loc[good, "aesthetic_score"].to_numpy(float), reference, atol=1e-6)


def _write(path, columns: dict, row_group_size=None):
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def test_parquet_bad_input_per_row_reasons_or_one_clear_error(tmp_path, tiny_checkpoint, aesthetic_weights,
                                                              monkeypatch):
    root = tmp_path / "pq"
    root.mkdir()
    good = [image_bytes(i) for i in range(5)]
    cells = [good[0], None, b"\x89PNG garbage", good[1], image_bytes(7, size=(400, 300), fmt="PNG", noise=255),
             good[2], good[3], good[4]]
    _write(root / "part-0.parquet", {"png": pa.array(cells, pa.binary()), "caption": [f"c{i}" for i in range(8)]},
           row_group_size=3)
    monkeypatch.setenv("NEMO_AESTHETIC_MAX_MEMBER_BYTES", "100000")
    df = score(ImageTextPairDataset.from_parquet(str(root)), tiny_checkpoint, aesthetic_weights)
    assert list(df["key"]) == [f"{i:09d}" for i in range(8)] and list(df["caption"]) == [f"c{i}" for i in range(8)]
    assert "null in this row" in df["error"][1] and "not an image" in df["error"][2]
    assert "image too large" in df["error"][4]
    assert df["error"][[0, 3, 5, 6, 7]].isna().all() and df["aesthetic_score"][[0, 3, 5, 6, 7]].notna().all()

    # the input files (their images) are never written over
    with pytest.raises(ValueError, match="would replace the input Parquet files"):
        ImageTextPairDataset.from_parquet(str(root)).save_metadata(str(root))
    assert pq.read_table(root / "part-0.parquet").column("png").to_pylist() == cells

    # no image column, or the named one of another type: one clear error naming the columns
    _write(tmp_path / "no_image.parquet", {"url": ["http://x/1.jpg"], "caption": ["c"]})
    with pytest.raises(LayoutError, match="no image column.*columns: url, caption"):
        ImageTextPairDataset.from_parquet(str(tmp_path / "no_image.parquet"))
    _write(tmp_path / "strings.parquet", {"image": ["/not/bytes.jpg"]})
    with pytest.raises(LayoutError, match="column 'image' holds string, not image bytes"):
        ImageTextPairDataset.from_parquet(str(tmp_path / "strings.parquet"), image_column="image")
    proc = run_cli("score", tmp_path / "no_image.parquet", "--out", tmp_path / "o", "--tiny", "--cluster", "sync")
    assert proc.returncode == 2 and "no image column" in proc.stderr and "Traceback" not in proc.stderr


def test_nothing_to_read_names_the_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("hi")
    with pytest.raises(LayoutError, match="webdataset: .*folder: .*parquet: "):
        detect_layout(str(tmp_path / "empty"))
    proc = run_cli("score", tmp_path / "empty", "--out", tmp_path / "o", "--tiny", "--cluster", "sync")
    assert proc.returncode == 2 and "we read webdataset" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- tars of any image format
def test_tars_with_png_and_webp_members_score_in_both_fronts(tmp_path, tiny_checkpoint, aesthetic_weights):
    from nemo_aesthetic.backends.dask import stream
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
    from nemo_aesthetic.stages.image.io.image_writer import ImageWriterStage

    fmts = {"png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "jpeg": "JPEG"}
    images = [image_bytes(i, fmt=fmt) for i, fmt in enumerate(fmts.values())]
    legacy = tar_scores(tmp_path, images, list(fmts), tiny_checkpoint, aesthetic_weights)
    assert np.isfinite(legacy).all()

    stages = [ImageReaderStage(task_batch_size=10, verbose=False),
              ImageEmbeddingStage(model_name=TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                                  model_inference_batch_size=4, num_threads=2),
              ImageWriterStage(str(tmp_path / "written"))]
    (task,) = FilePartitioningStage(str(tmp_path / "as_tars"), file_extensions=[".tar"]).process()
    (out,) = list(stream(stages, [task]))
    (tar_path,) = [p for p in out.data if p.endswith(".tar")]
    with tarfile.open(tar_path) as tar:  # the original members, keys and bytes (no re-encoding)
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert members == {f"{i:04d}.{ext}": data for i, (ext, data) in enumerate(zip(fmts, images))}
    rows = pd.read_parquet([p for p in out.data if p.endswith(".parquet")][0])
    assert rows["embedding"].map(len).nunique() == 1 and all(np.isfinite(e).all() for e in rows["embedding"])
    assert [p.rsplit("/", 1)[1] for p in rows["original_path"]] == [f"{i:04d}.{e}" for i, e in enumerate(fmts)]


def test_sources_partitions_are_small_and_picklable(tmp_path):
    import pickle

    from nemo_aesthetic.engine.sources import list_partitions

    root = tmp_path / "many"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(25):
            (root / f"d{d}" / f"{i:03d}.jpg").write_bytes(b"x")
    parts = list(list_partitions(str(root), "folder", files_per_partition=10))
    assert [(p.directory, p.start, p.stop) for p in parts[:4]] == [("d0", 0, 10), ("d0", 10, 20), ("d0", 20, 25),
                                                                  ("d1", 0, 10)]
    assert len(parts) == 9 and all(len(pickle.dumps(p)) < 400 for p in parts)
    assert [p.name for p in parts] == [f"{i:05d}" for i in range(9)]
