"""Fetch one file over HTTP(S) with an MD5 check; used for the official CIFAR-10 archive.

The file is streamed to a temp name in the destination folder and renamed only once its checksum
matches, so an interrupted or corrupt download never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from trainable.files import replacing

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30


class DataError(ValueError):
    """Data that cannot be found, fetched or read; one line naming the path or key."""


def _stream(response, handle, digest, label: str, progress: bool) -> None:
    total = int(response.headers.get("Content-Length") or 0)
    done = 0
    while chunk := response.read(CHUNK_BYTES):
        handle.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress:
            share = f" {100 * done / total:5.1f}%" if total else ""
            print(f"\rdownloading {label}: {done / 1e6:7.1f} MB{share}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)


def _fetch(url: str, temp: Path, dest: Path, progress: bool) -> str:
    """Stream url into temp; the MD5 hex digest of what arrived."""
    digest = hashlib.md5()
    # network errors here; a failed write (a full disk) goes up to download(), which names the folder
    try:
        with open(temp, "wb") as handle, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            _stream(response, handle, digest, dest.name, progress)
    except urllib.error.HTTPError as err:
        raise DataError(f"{dest}: cannot download {url}: the server answered HTTP {err.code} {err.reason}; "
                        f"fetch that file elsewhere and put it at {dest}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"{dest}: cannot download {url} ({reason}); this machine seems offline: "
                        f"fetch that file elsewhere and put it at {dest}") from None
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download url to dest (a file path), check its MD5 and return dest.

    Raises DataError on a network failure (saying where to put the file by hand) or on an MD5
    mismatch; in both cases no file and no temp file is left behind.
    """
    dest = Path(dest)
    try:
        with replacing(dest) as temp:
            got = _fetch(url, temp, dest, progress)
            if got != md5.lower():
                raise DataError(f"{dest}: MD5 mismatch for {url}: got {got}, expected {md5}")
    except OSError as err:
        raise DataError(f"{dest.parent}: cannot write the download there ({err.strerror})") from None
    return dest
