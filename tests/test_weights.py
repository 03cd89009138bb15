"""Weights resolution: explicit path, verified cache, verified atomic download, clear errors.

Downloads come from a real HTTP server on 127.0.0.1 started by the test (``$NEMO_AESTHETIC_MIRROR``
points the library at it), serving a copy of the real weights file or deliberately wrong bytes.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import threading
import time

import pytest

from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.weights import (
    AESTHETIC_WEIGHTS,
    MIRROR_ENV,
    WeightsUnavailableError,
    cache_dir,
    resolve_weights,
    sha256_of,
)

FILENAME = AESTHETIC_WEIGHTS.filename


class _Server:
    def __init__(self, directory):
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def online(monkeypatch):
    """Lift the offline switches the autouse fixture sets (this test may download)."""
    monkeypatch.delenv("NEMO_AESTHETIC_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """Start a server for a directory and point the mirror at it: ``serve(files: dict) -> server``."""
    servers = []

    def start(files: dict[str, bytes | str]):
        root = tmp_path / f"www{len(servers)}"
        root.mkdir()
        for name, content in files.items():
            if isinstance(content, bytes):
                (root / name).write_bytes(content)
            else:
                shutil.copyfile(content, root / name)
        server = _Server(root)
        servers.append(server)
        monkeypatch.setenv(MIRROR_ENV, server.url)
        return server

    yield start
    for server in servers:
        server.close()


def _cache_listing() -> list[str]:
    return sorted(os.listdir(cache_dir())) if os.path.isdir(cache_dir()) else []


# --------------------------------------------------------------------------- explicit path
def test_explicit_missing_model_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/weights.pth"):
        resolve_weights(AESTHETIC_WEIGHTS, str(missing))
    # As NeMo Curator 0.x: an explicit path is stored as given (it may exist only on the workers)
    # and opened where the model loads, which then names it.
    clf = AestheticClassifier(model_path=str(missing))
    assert clf.model_path == str(missing)
    with pytest.raises(FileNotFoundError, match="model_path does not exist on this worker: .*nowhere/weights.pth"):
        clf.load_model("cpu")


def test_explicit_model_path_is_used_as_given(aesthetic_weights):
    assert resolve_weights(AESTHETIC_WEIGHTS, aesthetic_weights) == aesthetic_weights
    assert _cache_listing() == []  # nothing copied or downloaded


# --------------------------------------------------------------------------- cache
def test_cached_file_with_right_checksum_is_used_without_network(real_aesthetic_weights, online, serve):
    os.makedirs(cache_dir())
    shutil.copyfile(real_aesthetic_weights, os.path.join(cache_dir(), FILENAME))
    server = serve({FILENAME: b"the server must not be asked"})
    path = resolve_weights(AESTHETIC_WEIGHTS)
    assert path == os.path.join(cache_dir(), FILENAME)
    assert server.requests == []
    # the default classifier (no model_path) uses it too
    assert AestheticClassifier().model_path == path
    assert server.requests == []


def test_cached_file_is_used_offline(real_aesthetic_weights):
    os.makedirs(cache_dir())
    shutil.copyfile(real_aesthetic_weights, os.path.join(cache_dir(), FILENAME))
    assert resolve_weights(AESTHETIC_WEIGHTS) == os.path.join(cache_dir(), FILENAME)


# --------------------------------------------------------------------------- download
def test_download_from_mirror_verifies_and_writes_atomically(real_aesthetic_weights, online, serve):
    server = serve({FILENAME: real_aesthetic_weights})
    clf = AestheticClassifier()
    expected = os.path.join(cache_dir(), FILENAME)
    assert clf.model_path == expected
    assert server.requests == [f"/{FILENAME}"]
    assert sha256_of(expected) == AESTHETIC_WEIGHTS.sha256
    assert _cache_listing() == [FILENAME]  # no temporary leftovers
    # and the downloaded head works
    import torch

    with torch.inference_mode():
        score = clf.load_model("cpu")(torch.full((1, 768), 768 ** -0.5))
    assert float(score) == pytest.approx(4.883284568786621, abs=1e-5)  # reference_scores.json
    # second resolution: from the cache, no new request
    resolve_weights(AESTHETIC_WEIGHTS)
    assert len(server.requests) == 1


def test_download_with_wrong_bytes_is_refused_and_leaves_nothing(online, serve):
    server = serve({FILENAME: b"not the weights" * 1000})
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(AESTHETIC_WEIGHTS)
    message = str(info.value)
    assert FILENAME in message
    assert cache_dir() in message
    assert f"{server.url}/{FILENAME}" in message
    assert hashlib.sha256(b"not the weights" * 1000).hexdigest() in message
    assert AESTHETIC_WEIGHTS.sha256 in message
    assert _cache_listing() == []
    # the classifier reports the same, before any work
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        AestheticClassifier()
    assert _cache_listing() == []


def test_corrupt_cached_file_is_replaced_by_a_fresh_download(real_aesthetic_weights, online, serve):
    os.makedirs(cache_dir())
    target = os.path.join(cache_dir(), FILENAME)
    with open(real_aesthetic_weights, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: loads fine as a state dict, wrong numbers
    with open(target, "wb") as f:
        f.write(data[: len(data) - 10])
    server = serve({FILENAME: real_aesthetic_weights})
    assert resolve_weights(AESTHETIC_WEIGHTS) == target
    assert server.requests == [f"/{FILENAME}"]
    assert sha256_of(target) == AESTHETIC_WEIGHTS.sha256
    assert _cache_listing() == [FILENAME]


def test_corrupt_cached_file_offline_is_reported_not_used(aesthetic_weights):
    os.makedirs(cache_dir())
    target = os.path.join(cache_dir(), FILENAME)
    with open(target, "wb") as f:
        f.write(b"truncated")
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(AESTHETIC_WEIGHTS)
    message = str(info.value)
    assert "corrupt" in message and target in message
    assert AESTHETIC_WEIGHTS.url in message


def test_corrupt_cache_and_wrong_download_keeps_error_and_no_poisoned_file(online, serve):
    os.makedirs(cache_dir())
    target = os.path.join(cache_dir(), FILENAME)
    with open(target, "wb") as f:
        f.write(b"truncated")
    serve({FILENAME: b"also wrong"})
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        resolve_weights(AESTHETIC_WEIGHTS)
    # the bad download did not replace anything, and left no temporary file
    assert _cache_listing() == [FILENAME]
    with open(target, "rb") as f:
        assert f.read() == b"truncated"


# --------------------------------------------------------------------------- offline / unreachable
def test_offline_without_file_names_file_directory_and_url():
    with pytest.raises(WeightsUnavailableError) as info:
        AestheticClassifier()
    message = str(info.value)
    assert FILENAME in message
    assert cache_dir() in message
    assert os.path.join(cache_dir(), FILENAME) in message
    assert AESTHETIC_WEIGHTS.url in message
    assert "offline" in message
    assert "NEMO_AESTHETIC_HOME" in message
    assert _cache_listing() == []


def test_hf_hub_offline_alone_also_means_offline(monkeypatch, serve):
    monkeypatch.delenv("NEMO_AESTHETIC_OFFLINE")
    server = serve({FILENAME: b"x"})
    with pytest.raises(WeightsUnavailableError, match="offline"):
        resolve_weights(AESTHETIC_WEIGHTS)
    assert server.requests == []


def test_offline_message_names_the_mirror_url_when_one_is_set(monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, "http://mirror.example.internal/weights/")
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(AESTHETIC_WEIGHTS)
    assert f"http://mirror.example.internal/weights/{FILENAME}" in str(info.value)


def test_unreachable_server_is_a_clear_error(online, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(AESTHETIC_WEIGHTS, timeout=2)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/{FILENAME}" in message
    assert "refused" in message.lower()
    assert cache_dir() in message
    assert _cache_listing() == []


def test_server_that_never_answers_times_out(online, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (kernel backlog) but never sends a byte
    try:
        monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="timed out") as info:
            resolve_weights(AESTHETIC_WEIGHTS, timeout=1)
        assert time.monotonic() - start < 10
        assert FILENAME in str(info.value)
    finally:
        listener.close()
    assert _cache_listing() == []


def test_http_404_is_a_clear_error(online, serve):
    server = serve({"other-file.pth": b"x"})
    with pytest.raises(WeightsUnavailableError, match="404") as info:
        resolve_weights(AESTHETIC_WEIGHTS)
    assert f"{server.url}/{FILENAME}" in str(info.value)
    assert _cache_listing() == []
