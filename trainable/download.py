"""Fetch one file over HTTP(S) with an MD5 check; used for the official CIFAR-10 archive.

The file is streamed to a temp name in the destination folder and renamed only once its checksum
matches, so an interrupted or corrupt download never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

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


def download(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download url to dest (a file path), check its MD5 and return dest.

    Raises DataError on a network failure (saying where to put the file by hand) or on an MD5
    mismatch; in both cases no file and no temp file is left behind.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise DataError(f"{dest.parent}: cannot write the download there ({err.strerror})") from None
    temp = Path(temp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(descriptor, "wb") as handle, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            _stream(response, handle, digest, dest.name, progress)
    except urllib.error.HTTPError as err:
        temp.unlink(missing_ok=True)
        raise DataError(f"{dest}: cannot download {url}: the server answered HTTP {err.code} {err.reason}; "
                        f"fetch that file elsewhere and put it at {dest}") from None
    except (urllib.error.URLError, OSError) as err:
        temp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DataError(f"{dest}: cannot download {url} ({reason}); this machine seems offline: "
                        f"fetch that file elsewhere and put it at {dest}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != md5.lower():
        temp.unlink(missing_ok=True)
        raise DataError(f"{dest}: MD5 mismatch for {url}: got {digest.hexdigest()}, expected {md5}")
    temp.chmod(0o644)  # mkstemp makes 0600
    temp.replace(dest)
    return dest
