"""Downloads that a hostile or broken server cannot turn into a crash, a full disk or a traceback.

:func:`fetch` streams a URL into a file with a size cap (checked against Content-Length first,
then as bytes arrive), hashing as it goes; :func:`extract_member` takes one member out of a zip
with the same cap, whatever the zip's header claims. Every failure on the wire - refused, reset,
cut mid-body, an endless body, a reply that is not HTTP - is one :class:`DownloadError` (an
OSError) whose message says what happened; ``http.client``'s own exceptions never escape. What to
download, and how to check it, is :mod:`nemo_aesthetic.weights`' business.
"""
from __future__ import annotations

import hashlib
import http.client
import posixpath
import urllib.error
import urllib.request
import zipfile


class DownloadError(OSError):
    """A download failed on the wire or went over its size cap; the message says which and where."""


def fetch(url: str, out, max_bytes: int, timeout: float) -> str:
    """Stream ``url`` into file ``out``, at most ``max_bytes``; returns the sha256 of what came.

    Raises :class:`DownloadError` saying what happened: an HTTP error status, no connection, a
    body cut short or over the cap, a reply that is not HTTP.
    """
    h, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError(f"{url} is {int(declared)} bytes, more than the {max_bytes} this file "
                                    "can be; refusing to download it")
            while block := response.read(min(1 << 20, max_bytes + 1 - received)):
                received += len(block)
                if received > max_bytes:
                    raise DownloadError(f"{url} sent more than {max_bytes} bytes, more than this file can be; "
                                        "stopped (a wrong URL or mirror?)")
                h.update(block)
                out.write(block)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot connect to {url}: {exc.reason}") from None
    except http.client.IncompleteRead as exc:
        raise DownloadError(f"{url}: the connection ended after {received + len(exc.partial)} bytes, before the "
                            f"end of the file{f' ({exc.expected} more expected)' if exc.expected else ''}") from None
    except http.client.HTTPException as exc:  # BadStatusLine, RemoteDisconnected, LineTooLong, ...
        raise DownloadError(f"{url}: the server's reply is not valid HTTP ({type(exc).__name__}: {exc})") from None
    except TimeoutError:
        raise DownloadError(f"{url}: no data for {timeout:g} s (timed out)") from None
    except ConnectionError as exc:
        raise DownloadError(f"{url}: the connection failed after {received} bytes ({exc})") from None
    return h.hexdigest()


def extract_member(archive: str, name: str, max_bytes: int, dest: str) -> str:
    """Copy the zip member whose base name is ``name`` to ``dest``, refusing one that is (or
    inflates to) more than ``max_bytes``; KeyError if there is none. Returns ``dest``."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if posixpath.basename(m.filename) == name and "__MACOSX" not in m.filename]
        if not members:
            raise KeyError(f"the zip has no {name} (members: {zf.namelist()[:10]})")
        if members[0].file_size > max_bytes:
            raise DownloadError(f"{name} in the zip is {members[0].file_size} bytes, more than the {max_bytes} "
                                "this file can be; refusing to extract it")
        written = 0
        with zf.open(members[0]) as src, open(dest, "wb") as out:
            while block := src.read(1 << 20):
                written += len(block)
                if written > max_bytes:  # the header understated it
                    raise DownloadError(f"{name} in the zip inflates past {max_bytes} bytes; refusing it")
                out.write(block)
    return dest
