"""``nemo-aesthetic dedup`` and ``filter --drop-duplicates`` on real img2dataset output.

``resize_keep_ratio_256`` (../shared/testdata) holds four pairs of byte-identical images in
different shards (the same picture behind two URLs). Scored with ``--tiny`` (offline), whose
random CLIP-shaped model gives different pictures embeddings that are very alike (cosine
~0.999997 for the closest two), so the eps used here is checked against the data itself: every
byte-identical pair must be above 1 - eps and every other pair below it.
"""
import hashlib
import tarfile
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import TESTDATA, needs_shared

from test_report import needs_chromium, render_check  # the report tests' Chromium check

from nemo_aesthetic import cli

SOURCE = TESTDATA / "img2dataset_output" / "resize_keep_ratio_256"
EPS = 1e-6

pytestmark = needs_shared(SOURCE, "real img2dataset output (img2dataset_output/resize_keep_ratio_256)")


def image_hashes(folder) -> dict[str, str]:
    """``{shard/key: sha256 of the stored image}`` of every ``.jpg`` member of the folder's tars."""
    found = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                if member.name.endswith(".jpg"):
                    found[f"{tar.stem}/{member.name[:-4]}"] = hashlib.sha256(t.extractfile(member).read()).hexdigest()
    return found


def read_metadata(folder) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("[0-9]*.parquet"))], ignore_index=True)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, aesthetic_weights):
    """The real output scored with --tiny, its Parquet written apart (the shared folder is read-only)."""
    out = tmp_path_factory.mktemp("dedup") / "scored"
    assert cli.main(["score", str(SOURCE), "--tiny", "--out", str(out), "--cluster", "sync",
                     "--aesthetic-weights", aesthetic_weights, "-q"]) == 0
    return out


def test_dedup_then_filter_drops_one_of_each_byte_identical_pair_and_nothing_else(scored, tmp_path, capsys):
    source_images = image_hashes(SOURCE)
    copies = defaultdict(list)
    for name, digest in source_images.items():
        copies[digest].append(name.split("/")[1])
    pairs = [sorted(keys) for keys in copies.values() if len(keys) > 1]
    assert len(pairs) == 4  # what the shared data is documented to hold
    before = {p.name: p.read_bytes() for p in scored.iterdir()}

    # dedup on a real LocalCluster (two worker processes), written apart with --out
    marked = tmp_path / "marked"
    assert cli.main(["dedup", str(scored), "--eps", str(EPS), "--out", str(marked), "--cluster", "cpu",
                     "--workers", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "duplicates: 4 " in printed and "not compared: 5" in printed, printed
    assert {p.name: p.read_bytes() for p in scored.iterdir()} == before  # the input is untouched
    assert sorted(p.name for p in marked.iterdir()) == ["00000.parquet", "00001.parquet", "00002.parquet"]

    rows = read_metadata(marked).set_index("key")
    assert len(rows) == len(read_metadata(scored))  # no row lost
    duplicates = rows[rows["duplicate_of"].notna()]
    # exactly one of each byte-identical pair is marked, naming the other (which is kept)
    assert sorted(sorted([k, v]) for k, v in duplicates["duplicate_of"].items()) == sorted(pairs)
    assert duplicates["duplicate_of"].isin(duplicates.index).sum() == 0
    assert (duplicates["nearest_similarity"] >= 1 - EPS).all()
    # the eps separates: every other compared row's best match is below 1 - eps
    others = rows[rows["duplicate_of"].isna() & rows["nearest_similarity"].notna()]
    assert len(others) and (others["nearest_similarity"] < 1 - EPS).all()
    assert (duplicates["nearest_id"] == duplicates["duplicate_of"]).all() and others["nearest_id"].notna().all()
    # rows without an image are kept, with the reason they were not compared
    failed = rows[rows["status"] != "success"]
    assert len(failed) == 5 and (failed["dedup_error"] == "no embedding").all()
    assert rows.loc[rows["status"] == "success", "dedup_error"].isna().all()
    meta = pq.read_schema(marked / "00000.parquet").metadata
    assert b"MEANINGLESS" in meta[b"nemo_aesthetic.tiny"]  # --tiny's warning survives the rewrite
    assert b'"eps": 1e-06' in meta[b"nemo_aesthetic.dedup"]

    kept = tmp_path / "kept"
    assert cli.main(["filter", str(marked), "--out", str(kept), "--drop-duplicates", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "duplicates dropped: 4" in printed and "wrote 19 samples" in printed, printed
    written = image_hashes(kept)
    assert len(written) == 19 and sorted(set(written.values())) == sorted(set(source_images.values()))


def test_drop_duplicates_with_top_k_chooses_among_the_rows_kept(scored, tmp_path, capsys):
    marked = tmp_path / "marked"
    assert cli.main(["dedup", str(scored), "--eps", str(EPS), "--out", str(marked), "--cluster", "sync",
                     "--which-to-keep", "easy", "-q"]) == 0
    rows = read_metadata(marked)
    unique = rows[rows["duplicate_of"].isna() & rows["aesthetic_score"].notna()]
    kept = tmp_path / "kept"
    assert cli.main(["filter", str(marked), "--out", str(kept), "--drop-duplicates", "--top-k", "8", "-q"]) == 0
    assert "wrote 8 samples" in capsys.readouterr().out
    written = read_metadata(kept)
    assert len(written) == 8 and len(set(image_hashes(kept).values())) == 8  # no picture twice
    best = np.sort(unique["aesthetic_score"].to_numpy())[::-1][:8]
    np.testing.assert_allclose(np.sort(written["aesthetic_score"].to_numpy())[::-1], best, rtol=1e-6)


def test_filter_drop_duplicates_on_a_dataset_never_deduped_is_a_clear_error(scored, tmp_path, capsys):
    assert cli.main(["filter", str(scored), "--out", str(tmp_path / "kept"), "--drop-duplicates"]) == 2
    err = capsys.readouterr().err
    assert "never dedup'ed" in err and "nemo-aesthetic dedup" in err and "Traceback" not in err
    assert not (tmp_path / "kept").exists()


def test_dedup_bad_options_are_clear_errors(scored, tmp_path, capsys):
    assert cli.main(["dedup", str(scored), "--eps", "0.01", "--n-clusters", "1000", "--out", str(tmp_path / "o"),
                     "--cluster", "sync"]) == 2
    assert "n_clusters=1000 is larger than the 23 rows" in capsys.readouterr().err
    assert cli.main(["dedup", str(scored), "--eps", "0.01", "--out", str(scored / "inside"), "--cluster", "sync"]) == 2
    assert "inside PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dedup", str(scored), "--eps", "1.5"])
    assert exit_.value.code == 2 and "within [0, 1)" in capsys.readouterr().err
    assert cli.main(["dedup", str(SOURCE), "--eps", "0.01", "--cluster", "sync"]) == 2
    assert "no image_embedding column" in capsys.readouterr().err


@needs_chromium
def test_report_shows_the_pairs_on_both_sides_of_eps_as_pictures(scored, tmp_path, capsys):
    """report on a dedup'ed dataset: the marked pairs least similar first, then the kept rows most
    similar to another, each pair side by side with its similarity; every picture renders."""
    import re


    marked = tmp_path / "marked"
    assert cli.main(["dedup", str(scored), "--eps", str(EPS), "--out", str(marked), "--cluster", "sync", "-q"]) == 0
    page_path = tmp_path / "report.html"
    assert cli.main(["report", str(marked), "--out", str(page_path), "--top", "5", "-q"]) == 0
    capsys.readouterr()
    page = page_path.read_text()
    section = page.split('id="duplicates"', 1)[1]
    marked_part, kept_part = section.split("Kept rows most similar", 1)
    pair = re.compile(r'<div class="na-pair"><figure><img src="([^"]+)"[^>]*><figcaption[^>]*>(\d+) / (\d+)'
                      r'</figcaption></figure><span class="na-sim">([0-9.]+)</span><figure><img src="([^"]+)"'
                      r'[^>]*><figcaption[^>]*>(\d+) / (\d+)</figcaption>')
    shown_marked, shown_kept = pair.findall(marked_part), pair.findall(kept_part)
    rows = read_metadata(marked).set_index("key")
    assert sorted(m[2] for m in shown_marked) == sorted(rows.index[rows["duplicate_of"].notna()])
    for left, _, key, similarity, right, _, other in shown_marked:
        assert rows.loc[key, "duplicate_of"] == other and float(similarity) >= 1 - EPS
        assert left == right  # byte-identical images give the same thumbnail
    assert len(shown_kept) == 5  # --top 5: the five kept rows nearest the cut, most similar first
    similarities = [float(k[3]) for k in shown_kept]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] < 1 - EPS
    expected = rows.loc[rows["duplicate_of"].isna(), "nearest_similarity"].nlargest(5).to_numpy()
    assert similarities == pytest.approx(list(expected), abs=1e-6)
    assert "--eps 1e-06" in section
    check = render_check(page_path, tmp_path)
    # the chart, three grids of 5, and both pictures of the 4 + 5 pairs: every one decoded
    assert check["images"] == 1 + 3 * 5 + 2 * (4 + 5) and check["broken"] == 0, check
