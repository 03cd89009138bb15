"""Hostile download servers (issue 17), real ones on 127.0.0.1: an endless body, a body cut
mid-chunk, a Content-Length of 10 GB, a reply that is not HTTP, a small zip whose member inflates
past any weights file. Each gives one clear error (no ``http.client`` exception, no traceback at
the command line), costs at most the file's cap, and leaves nothing in the cache.
"""
from __future__ import annotations

import http.server
import os
import socket
import socketserver
import threading
import time
import zipfile

import pytest

from nemo_aesthetic import cli
from nemo_aesthetic.image.classifiers.nsfw import resolve_nsfw_weights
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS, WeightsUnavailableError, resolve_weights

CAP = AESTHETIC_WEIGHTS.max_bytes


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sent: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        kind = self.server.kind
        if kind == "endless":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            block, sent = b"\0" * (1 << 20), 0
            try:
                while sent < 8 * CAP:  # (a real endless server; bounded here so a broken client ends)
                    self.wfile.write(block)
                    sent += len(block)
            except OSError:
                pass
            Hostile.sent[kind] = sent
        elif kind == "cut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"1000\r\n" + b"x" * 100)  # a 4096-byte chunk, cut after 100
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        elif kind == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 10**9))
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
        elif kind == "zipbomb":
            data = self.server.payload
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """``hostile(kind)``: a server of that kind as $NEMO_AESTHETIC_MIRROR, downloads allowed."""
    monkeypatch.delenv("NEMO_AESTHETIC_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    servers = []

    def start(kind, payload=b""):
        if kind == "not_http":
            server = socketserver.TCPServer(("127.0.0.1", 0), NotHttp)
        else:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
            server.kind, server.payload = kind, payload
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("NEMO_AESTHETIC_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class NotHttp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(1024)
        self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")


def cache_is_empty() -> bool:
    home = os.environ["NEMO_AESTHETIC_HOME"]
    return not os.path.exists(home) or os.listdir(home) == []


@pytest.mark.parametrize("kind, says", [
    ("endless", f"sent more than {CAP} bytes"),
    ("cut", "before the end of the file"),
    ("huge", "is 10000000000 bytes, more than the"),
    ("not_http", "the server's reply is not valid HTTP (BadStatusLine"),
])
def test_hostile_server_gives_one_clear_error_and_an_empty_cache(hostile, kind, says):
    hostile(kind)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_weights(AESTHETIC_WEIGHTS, timeout=10)
    assert says in str(error.value), str(error.value)
    assert "Place the file at" in str(error.value)  # still says what to do by hand
    assert time.monotonic() - start < 30
    assert cache_is_empty()
    if kind == "endless":
        assert Hostile.sent["endless"] < 2 * CAP  # we hung up soon after the cap


def test_nsfw_zip_whose_member_inflates_past_the_cap_is_refused(hostile, tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("clip_autokeras_binary_nsfw.pth", "w", force_zip64=True) as member:
            for _ in range(CAP // (1 << 20) + 8):
                member.write(b"\0" * (1 << 20))
    assert path.stat().st_size < 2 * 2**20  # a small zip...
    hostile("zipbomb", path.read_bytes())
    with pytest.raises(WeightsUnavailableError, match="clip_autokeras_binary_nsfw.pth in the zip is .* bytes, more than"):
        resolve_nsfw_weights(timeout=10)
    assert cache_is_empty()


@pytest.mark.parametrize("kind", ["cut", "not_http"])
def test_the_command_line_says_it_in_one_message(hostile, tmp_path, capsys, kind):
    from factory import write_img2dataset

    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=2)
    hostile(kind)
    # --tiny goes on with a random head when the real one cannot be had, and says why in one message
    assert cli.main(["score", str(tmp_path / "ds"), "--cluster", "sync", "--tiny", "-q"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM head" in out
    assert "Traceback" not in err and "http.client" not in err
    assert "sac+logos+ava1-l14-linearMSE.pth" in err and ("connection ended" in err or "not valid HTTP" in err)
