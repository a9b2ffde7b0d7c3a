"""Download a Hugging Face hub repo (`meta-llama/Llama-3.2-1B-Instruct`) with `huggingface_hub`.

Owns the choice of files (the safetensors layout, or with `original=True` only Meta's `original/*`
checkpoint, never both by default: together they double the download) and the translation of the
hub's exceptions into one-line errors with a fix. `huggingface_hub` is imported lazily; the transfer,
resume and cache layout are its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import DownloadError, DownloadUsageError

ORIGINAL = "original/*"
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/")


def parse_repo_id(spec: str) -> str:
    """'meta-llama/Llama-3.2-1B' (or its https://huggingface.co/… page URL) -> the repo id."""
    repo_id = _HUB_URL.sub("", spec.strip()).strip("/")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise DownloadUsageError(
            f"not a Hugging Face repo id: {spec!r}",
            hint="use owner/name, e.g. meta-llama/Llama-3.2-1B-Instruct; "
            "for Meta's signed URL use --url",
        )
    return repo_id


def download_repo(
    repo_id: str,
    *,
    out: Path | None = None,
    original: bool = False,
    revision: str | None = None,
    quiet: bool = False,
) -> Path:
    """Download a hub repo; returns the folder holding its files.

    Args:
        repo_id: `owner/name` on the hub (`HF_ENDPOINT` picks another hub).
        out: a folder to put the files in; default the Hugging Face cache, where
            `llama3 chat --model owner/name` finds them.
        original: only Meta's native checkpoint under `original/` (consolidated.NN.pth,
            params.json, tokenizer.model); otherwise everything except `original/`.
        revision: a branch, tag or commit (default: main).
        quiet: no progress bars.

    Raises:
        DownloadError: the repo is gated, private, missing, or the hub cannot be reached.
    """
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise DownloadError(
            "downloading from the Hugging Face hub needs the huggingface_hub package",
            hint="pip install huggingface_hub",
        ) from None
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    patterns = {"allow_patterns": [ORIGINAL]} if original else {"ignore_patterns": [ORIGINAL]}
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, local_dir=out, **patterns
        )
    except Exception as e:
        raise _translate(e, repo_id, revision, constants.ENDPOINT) from None
    path = Path(path)
    if original and not (path / "original").is_dir():
        raise DownloadError(
            f"{repo_id} has no original/ folder (Meta's native checkpoint)",
            hint="drop --original to download the Hugging Face safetensors files",
        )
    return path


def _translate(e: Exception, repo_id: str, revision: str | None, endpoint: str) -> Exception:
    """A huggingface_hub exception -> a one-line DownloadError naming the fix."""
    from huggingface_hub import errors, get_token

    page = f"{endpoint}/{repo_id}"
    logged_in = get_token() is not None
    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(e, errors.GatedRepoError):
        return DownloadError(
            f"{repo_id} is a gated repo and "
            + ("your account has not been granted access" if logged_in else "no token is set"),
            hint=f"accept the licence at {page}"
            + (" and wait for approval" if logged_in else f", then {login}"),
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return DownloadError(
            f"repo not found on {endpoint}: {repo_id}",
            hint="check the spelling (owner/name)"
            + ("" if logged_in else f"; if it is private or gated, {login}"),
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return DownloadUsageError(
            f"{repo_id} has no revision {revision!r}", hint="use a branch, tag or commit it has"
        )
    if isinstance(e, errors.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            return DownloadError(
                f"the hub rejected your token (HTTP 401) for {repo_id}",
                hint="create a new token and log in again with `hf auth login`, or fix HF_TOKEN",
            )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return DownloadError(
            f"the hub answered HTTP {status} for {repo_id}: {first}",
            hint="try again later; files already downloaded are kept",
        )
    if isinstance(e, errors.HFValidationError):
        return DownloadUsageError(f"not a Hugging Face repo id: {repo_id!r}", hint="use owner/name")
    if isinstance(e, errors.LocalEntryNotFoundError):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            var = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
            return DownloadError(
                f"{var} is set, so the hub is not contacted, and {repo_id} is not in the local cache",
                hint=f"unset {var} to download",
            )
        return DownloadError(
            f"cannot reach the Hugging Face hub at {endpoint} to download {repo_id}",
            hint="check the network connection (and HF_ENDPOINT or proxy settings); "
            "files already downloaded are kept",
        )
    if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests"):
        return DownloadError(
            f"cannot reach the Hugging Face hub at {endpoint} ({type(e).__name__})",
            hint="check the network connection (and HF_ENDPOINT or proxy settings)",
        )
    if isinstance(e, OSError):
        return DownloadError(
            f"download of {repo_id} failed: {e}", hint="check disk space and --out"
        )
    return e
