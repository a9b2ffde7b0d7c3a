"""Downloading checkpoints: Meta's signed-URL CDN (`meta.py`) and the Hugging Face hub (`hf_hub.py`).

This module owns the download errors; `progress.py` draws byte-count progress bars. Nothing here
loads a model: a download ends with files on disk that `llama3.loader` reads like any other.
"""

from __future__ import annotations

from ..errors import Llama3Error


class DownloadError(Llama3Error):
    """A download failed at run time: network, HTTP status, disk, or a checksum mismatch."""


class DownloadUsageError(DownloadError):
    """The request itself is wrong: a malformed signed URL, an unknown model name, a bad repo id."""

    exit_code = 2


class LinkExpiredError(DownloadError):
    """Meta's CDN answered 403: the signed link expired, was used up, or was pasted incompletely."""


class ChecksumError(DownloadError):
    """A downloaded file's md5 differs from the one in the model's `checklist.chk`."""


__all__ = ["ChecksumError", "DownloadError", "DownloadUsageError", "LinkExpiredError"]
