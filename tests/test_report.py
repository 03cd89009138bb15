"""``nemo-aesthetic report``: the HTML report, opened in a real headless Chromium.

A check script (``render_check.js``, injected into a copy of the page: the report itself has no
script) records on ``<body data-render-check=...>`` whether every ``<img>``
decoded (``naturalWidth > 0`` and, these images being opaque, no transparent pixel left by
a part that did not decode) and how many non-white pixels the histogram has; Chromium's
``--dump-dom`` gives the page after that script ran. The checker itself is tested: a broken
thumbnail data URI and a blank chart must be reported as such.

Chromium is the Debian package ``chromium`` (``.ci/run`` installs it); the rendering tests skip
when it is not installed. Everything else runs without it.
"""
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset
from PIL import Image

from nemo_aesthetic import cli, report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(apt-get install chromium; .ci/run does)")
NASTY_CAPTION = '<b>bold</b> & "quoted" <script>window.pwned = 1</script>'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ helpers
def scored_dataset(root, n_shards=2, rows_per_shard=8):
    """An img2dataset directory whose Parquet already has aesthetic_score and error (no model)."""
    expected = write_img2dataset(root, n_shards=n_shards, rows_per_shard=rows_per_shard)
    for shard in range(n_shards):
        path = root / f"{shard:05d}.parquet"
        df = pd.read_parquet(path)
        ok = df["status"] == "success"
        df["aesthetic_score"] = np.where(ok, 3.0 + (df["key"].astype(int) % 1000) * 0.25, np.nan).astype("float32")
        df["error"] = [None if o else f"no image: img2dataset status failed_to_download ({m})"
                       for o, m in zip(ok, df["error_message"])]
        if shard == 0:
            df.loc[df["key"] == "000000000", "caption"] = NASTY_CAPTION
        df.to_parquet(path, index=False)
    return expected


CHECK_SCRIPT = (Path(__file__).parent / "render_check.js").read_text()


def render_check(html_path, tmp_path) -> dict:
    """Open the page, with the check script added, in headless Chromium; the script's verdict."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    page = html_path.read_text()
    assert "<script" not in page.split("<body", 1)[0], "the report's head carries no script of its own"
    html_path = html_path.with_name(html_path.stem + ".checked.html")
    html_path.write_text(page.replace("</head>", f"<script>{CHECK_SCRIPT}</script></head>", 1))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = {}

    class Body(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "body":
                found.update(attrs)

    Body().feed(proc.stdout)
    assert "data-render-check" in found, f"the check script did not run; DOM: {proc.stdout[:500]}"
    check = json.loads(found["data-render-check"])
    check["dom"] = proc.stdout
    return check


def data_uris(page: str) -> list[str]:
    return re.findall(r'src="(data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)"', page)


# ------------------------------------------------------------------------------------ end to end
@needs_chromium
def test_report_of_a_cli_scored_dataset_renders_in_chromium(tmp_path, aesthetic_weights, tiny_checkpoint, capsys):
    data = tmp_path / "ds"
    expected = write_img2dataset(data, n_shards=2, rows_per_shard=8)
    checkpoint = tiny_checkpoint
    assert cli.main(["score", str(data), "--cluster", "sync", "--model", TINY_MODEL, "--model-kwargs",
                     json.dumps(TINY_KWARGS), "--clip-checkpoint", str(checkpoint),
                     "--aesthetic-weights", aesthetic_weights, "--quiet"]) == 0
    capsys.readouterr()

    out = tmp_path / "out" / "report.html"
    assert cli.main(["report", str(data), "--out", str(out), "--top", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    n_ok = sum(v["status"] == "success" for v in expected.values())
    assert f"rows: {len(expected)}   scored: {n_ok}   errors: {len(expected) - n_ok}" in printed
    assert "the median score" in printed and str(out) in printed

    page = out.read_text()
    png = out.with_suffix(".png")
    chart = png.read_bytes()
    assert chart.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(chart)) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
    assert "data:image/png;base64," + base64.b64encode(chart).decode() in page  # the same chart, embedded
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', page), re.findall(r'(?:src|href)="(?!data:)[^"]*"', page)
    assert "median score" in page

    check = render_check(out, tmp_path)
    # The chart plus 3 grids of 4 (top, bottom, around the threshold), every one decoded.
    assert check["images"] == 1 + 3 * 4, check
    assert check["broken"] == 0, [c for c in check["checks"] if not c["ok"]]
    assert check["chart_ink"] > 1000, check["chart_ink"]
    sizes = {c["id"]: (c["w"], c["h"]) for c in check["checks"]}
    assert sizes["histogram"] == Image.open(png).size
    thumbs = [s for k, s in sizes.items() if k != "histogram"]
    assert all(max(s) == 96 for s in thumbs), thumbs  # 96x64 sources are not upscaled


@needs_chromium
def test_broken_image_or_blank_chart_is_caught(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data)
    out = tmp_path / "report.html"
    summary = report.write_report(str(data), str(out), top=3)
    page = out.read_text()
    assert summary["images"] == len(set(data_uris(page))) - 1 > 0

    good = render_check(out, tmp_path)
    assert good["broken"] == 0 and good["chart_ink"] > 1000, good

    # One thumbnail's data URI replaced by bytes that are not an image: exactly that one is broken.
    thumb = next(u for u in data_uris(page) if u.startswith("data:image/jpeg"))
    broken_page = page.replace(thumb, "data:image/jpeg;base64," + base64.b64encode(b"not a jpeg" * 20).decode(), 1)
    (tmp_path / "broken.html").write_text(broken_page)
    broken = render_check(tmp_path / "broken.html", tmp_path)
    assert broken["broken"] == 1 and broken["images"] == good["images"], broken
    # A payload cut short (a third of the JPEG, valid base64) fails too.
    payload = thumb.split(",", 1)[1]
    cut = payload[: len(payload) // 12 * 4]
    (tmp_path / "cut.html").write_text(page.replace(thumb, "data:image/jpeg;base64," + cut, 1))
    assert render_check(tmp_path / "cut.html", tmp_path)["broken"] == 1

    # The chart swapped for a white PNG of the same size: it "loads", but has no ink.
    chart_uri = next(u for u in data_uris(page) if u.startswith("data:image/png"))
    with Image.open(io.BytesIO(base64.b64decode(chart_uri.split(",", 1)[1]))) as im:
        size = im.size
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, format="PNG")
    blank = page.replace(chart_uri, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    (tmp_path / "blank.html").write_text(blank)
    blank_check = render_check(tmp_path / "blank.html", tmp_path)
    assert blank_check["broken"] == 0 and blank_check["chart_ink"] == 0, blank_check


@needs_chromium
def test_captions_are_escaped(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data)
    out = tmp_path / "report.html"
    report.write_report(str(data), str(out), top=20)  # every scored row is shown
    page = out.read_text()
    assert "window.pwned" in page and "<script>window.pwned" not in page and "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in page
    dom = render_check(out, tmp_path)["dom"]
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in dom  # text in the page, not a script


# ------------------------------------------------------------------------------------ no browser needed
def test_report_content_without_a_browser(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data, n_shards=2, rows_per_shard=8)
    out = tmp_path / "r" / "page.html"
    summary = report.write_report(str(data), str(out), threshold=4.0, top=2)
    assert (tmp_path / "r" / "page.png").read_bytes().startswith(PNG_MAGIC)
    # keys 0..7 per shard, every 4th (3, 7) failed: scores 3 + 0.25 * i for i in 0,1,2,4,5,6
    assert summary == {"rows": 16, "scored": 12, "errors": 4, "threshold": 4.0, "threshold_is_median": False,
                       "passing": 6, "lowest": 3.0, "highest": 4.5, "images": 6, "missing_images": 0,
                       "html": str(out), "png": str(tmp_path / "r" / "page.png"), "tiny": False}
    page = out.read_text()
    assert "Threshold 4.000 (given)" in page
    assert re.search(r'<td class="n">4</td><td>no image</td>', page), "errors grouped by reason_group"
    frame = report.collect_scores(report_dataset(data))
    sel = report.select_rows(frame, 2, 4.0)
    assert list(sel["top"]["score"]) == [4.5, 4.5] and list(sel["bottom"]["score"]) == [3.0, 3.0]
    assert list(sel["around"]["score"]) == [4.0, 3.5]  # one at/above, one below the threshold
    assert summary["images"] == len(pd.concat(sel.values()).drop_duplicates(["shard", "id"]))


def test_grids_never_repeat_an_image_on_a_small_dataset():
    frame = pd.DataFrame({"shard": "00000", "id": [f"k{i}" for i in range(7)], "caption": None,
                          "score": [5.0, 1.0, 4.0, 2.0, 6.0, 3.0, np.nan], "error": None})
    sel = report.select_rows(frame, 3, threshold=3.5)
    shown = [i for grid in sel.values() for i in grid["id"]]
    assert len(shown) == len(set(shown)) == 6  # every scored row once, the unscored one never
    assert list(sel["top"]["score"]) == [6.0, 5.0, 4.0]
    assert list(sel["bottom"]["score"]) == [1.0, 2.0, 3.0]
    assert sel["around"].empty  # nothing left: a short grid rather than repeats
    roomy = report.select_rows(frame, 2, threshold=3.5)
    assert list(roomy["around"]["score"]) == [4.0, 3.0]


def test_histogram_counts_rows_in_whole_numbers_with_enough_bins_and_the_legend_off_the_bars():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from nemo_aesthetic.report.chart import histogram_figure

    scores = np.random.default_rng(0).normal(5, 1, 12)
    fig = histogram_figure(scores, threshold=5.0, threshold_label="median")

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert len(ax.patches) >= 10  # bars: 12 rows still get a shape, not 6 wide blocks
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y0 >= ax.get_window_extent(renderer).y1 - 1  # above the plot, not over the bars


def report_dataset(path):
    from nemo_aesthetic.datasets import ImageTextPairDataset

    return ImageTextPairDataset.from_webdataset(str(path))


def test_default_threshold_is_the_median_and_says_so(tmp_path, capsys):
    data = tmp_path / "ds"
    scored_dataset(data)
    assert cli.main(["report", str(data), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    scores = [3.0 + 0.25 * i for i in (0, 1, 2, 4, 5, 6)] * 2
    assert f"threshold: {np.median(scores):.3f} (the median score; pass --threshold to choose)" in printed
    assert "is the <b>median score</b>" in (tmp_path / "r.html").read_text()


def test_only_the_tars_of_shown_images_are_read(tmp_path, monkeypatch):
    data = tmp_path / "ds"
    scored_dataset(data, n_shards=3, rows_per_shard=8)
    frame = report.collect_scores(report_dataset(data))
    opened = []
    from nemo_aesthetic.datasets import shards

    real = shards.iter_samples

    def spy(fs, path, *a, **k):
        opened.append(path)
        return real(fs, path, *a, **k)

    monkeypatch.setattr(shards, "iter_samples", spy)
    rows = frame[(frame["shard"] == "00001") & frame["score"].notna()].head(2)
    thumbs = report.fetch_thumbnails(report_dataset(data), rows)
    assert [p.rsplit("/", 1)[-1] for p in opened] == ["00001.tar"]
    assert len(thumbs) == 2 and all(v.startswith("data:image/jpeg;base64,") for v in thumbs.values())


def test_missing_image_is_a_grey_box_not_a_failure(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data, n_shards=1, rows_per_shard=4)
    # A scored row whose key has no sample in the tar (metadata edited by hand, say).
    df = pd.read_parquet(data / "00000.parquet")
    df.loc[df["key"] == "000000000", "key"] = "000000099"
    df.to_parquet(data / "00000.parquet", index=False)
    summary = report.write_report(str(data), str(tmp_path / "r.html"), top=5)
    assert summary["missing_images"] == 1 and summary["images"] == 2
    assert "image not available" in (tmp_path / "r.html").read_text()


def test_integer_ids(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data, n_shards=2, rows_per_shard=4)
    for path in data.glob("*.parquet"):
        df = pd.read_parquet(path)
        df["key"] = df["key"].astype("int64")  # tar members stay zero-padded: 000010002.jpg
        df.to_parquet(path, index=False)
    summary = report.write_report(str(data), str(tmp_path / "r.html"), top=3)
    assert summary["missing_images"] == 0 and summary["images"] == 6
    assert "00001 / 10002" in (tmp_path / "r.html").read_text()


def test_error_groups_count_by_reason_most_frequent_first():
    assert report.error_groups(["no image: a", "no image: b", "cannot decode image: x", None]) == [
        ("no image", 2, "no image: a"), ("cannot decode image", 1, "cannot decode image: x")]


def test_report_errors_are_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "ds"
    write_img2dataset(data, n_shards=1, rows_per_shard=3)  # not scored
    cases = [
        (["report", str(data), "--out", str(tmp_path / "r.html")], "no aesthetic_score column"),
        (["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")], "does not exist"),
        (["report", str(data), "--out", str(tmp_path)], "--out is a directory"),
        (["report", str(data), "--out", str(tmp_path / "r.png")], "--out is the HTML file"),
    ]
    for argv, needle in cases:
        assert cli.main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(data), "--top", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--threshold" in out and "median" in out and "--top" in out and "--id-col" in out


def test_nothing_scored_still_gives_a_report(tmp_path):
    data = tmp_path / "ds"
    scored_dataset(data, n_shards=1, rows_per_shard=4)
    df = pd.read_parquet(data / "00000.parquet")
    df["aesthetic_score"] = np.float32("nan")
    df["error"] = "cannot decode image: OSError: broken"
    df.to_parquet(data / "00000.parquet", index=False)
    summary = report.write_report(str(data), str(tmp_path / "r.html"))
    assert summary["scored"] == 0 and summary["threshold"] is None and summary["errors"] == 4
    page = (tmp_path / "r.html").read_text()
    assert "cannot decode image" in page and "no scored rows" in page
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)
