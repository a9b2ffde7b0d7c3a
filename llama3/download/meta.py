"""Meta's signed-URL download: what Meta's `download.sh` does, in Python, resumable and md5-checked.

Owns the model table (a CLI name -> the folder on Meta's CDN, the local folder, the files), the
resumable HTTP fetch (a `.part` file continued with a Range request; a complete file is never fetched
again), and the check of every file against the model's `checklist.chk`. The signed URL's query
string is a secret (it grants the download): messages, errors and logs name the host and path only.
Standard library only. Prompting for the URL and the model list is the CLI's job, not this module's.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import quote, urlsplit

from ..utils.progress import Progress, format_bytes
from . import ChecksumError, DownloadError, DownloadUsageError, LinkExpiredError

log = logging.getLogger(__name__)

NEW_LINK_URL = "https://www.llama.com/llama-downloads/"
USER_AGENT = "llama3-download/0.1"
CHUNK = 1 << 20
#: files at the root of a Llama 3 link, saved beside the model folders (as Meta's download.sh does)
LLAMA3_ROOT_FILES = ("LICENSE", "USE_POLICY")


@dataclass(frozen=True, slots=True)
class MetaModel:
    """One downloadable model: where it lives on the CDN and which files make it up."""

    name: str  # the spelling shown to users, e.g. "8B-instruct"
    folder: str  # local folder created under --out
    remote: str  # the CDN folder the URL's "*" is replaced with (plus "/<file>")
    files: tuple[str, ...]  # what is fetched; checklist.chk may add more
    aliases: tuple[str, ...] = ()
    family: str = "3"

    def spellings(self) -> tuple[str, ...]:
        return (self.name, self.folder, *self.aliases)


def _files(shards: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    # checklist.chk first, so every later file can be checked as soon as it is complete.
    pth = tuple(f"consolidated.{i:02d}.pth" for i in range(shards))
    return ("checklist.chk", "params.json", "tokenizer.model", *extra, *pth)


def _llama3(name: str, folder: str, remote: str, shards: int) -> MetaModel:
    # download.sh accepts 8B/8b and 8B-instruct/8b-instruct/8b-Instruct/8B-Instruct: case-insensitive.
    return MetaModel(name, folder, remote, _files(shards), aliases=(remote,), family="3")


def _llama3x(model_id: str, folder: str, shards: int, extra: tuple[str, ...] = ()) -> MetaModel:
    # Llama 3.1+ links (Meta's `llama model download`): "<folder>/<file>", folder = the HF repo name.
    family = model_id.removeprefix("Llama").split("-")[0]
    return MetaModel(model_id, folder, folder, _files(shards, extra), family=family)


MODELS: tuple[MetaModel, ...] = (
    _llama3("8B", "Meta-Llama-3-8B", "8b_pre_trained", 1),
    _llama3("8B-instruct", "Meta-Llama-3-8B-Instruct", "8b_instruction_tuned", 1),
    _llama3("70B", "Meta-Llama-3-70B", "70b_pre_trained", 8),
    _llama3("70B-instruct", "Meta-Llama-3-70B-Instruct", "70b_instruction_tuned", 8),
    _llama3x("Llama3.1-8B", "Llama-3.1-8B", 1),
    _llama3x("Llama3.1-8B-Instruct", "Llama-3.1-8B-Instruct", 1),
    _llama3x("Llama3.1-70B", "Llama-3.1-70B", 8),
    _llama3x("Llama3.1-70B-Instruct", "Llama-3.1-70B-Instruct", 8),
    _llama3x("Llama3.1-405B:bf16-mp8", "Llama-3.1-405B-MP8", 8),
    _llama3x("Llama3.1-405B-Instruct:bf16-mp8", "Llama-3.1-405B-Instruct-MP8", 8),
    _llama3x("Llama3.1-405B:bf16-mp16", "Llama-3.1-405B-MP16", 16),
    _llama3x("Llama3.1-405B-Instruct:bf16-mp16", "Llama-3.1-405B-Instruct-MP16", 16),
    _llama3x("Llama3.2-1B", "Llama-3.2-1B", 1),
    _llama3x("Llama3.2-1B-Instruct", "Llama-3.2-1B-Instruct", 1),
    _llama3x("Llama3.2-3B", "Llama-3.2-3B", 1),
    _llama3x("Llama3.2-3B-Instruct", "Llama-3.2-3B-Instruct", 1),
    _llama3x("Llama3.3-70B-Instruct", "Llama-3.3-70B-Instruct", 8),
)
#: what an empty answer to the model prompt means (download.sh: "press Enter for all")
DEFAULT_MODELS = ("8B", "8B-instruct", "70B", "70B-instruct")
MODELS_PROMPT = (
    "Enter the list of models to download without spaces (8B,8B-instruct,70B,70B-instruct), "
    "or press Enter for all: "
)
URL_PROMPT = "Enter the URL from email: "


def parse_models(spec: str) -> list[MetaModel]:
    """'8B-instruct,70B' -> models, in order, without duplicates; '' -> the four Llama 3 models."""
    names = [s.strip() for s in spec.split(",") if s.strip()] or list(DEFAULT_MODELS)
    by_spelling = {s.lower(): m for m in MODELS for s in m.spellings()}
    out: list[MetaModel] = []
    for name in names:
        model = by_spelling.get(name.lower())
        if model is None:
            raise DownloadUsageError(
                f"unknown model name {name!r}",
                hint="Llama 3 links: 8B, 8B-instruct, 70B, 70B-instruct; Llama 3.1+ links: "
                + ", ".join(m.name for m in MODELS if m.family != "3"),
            )
        if model not in out:
            out.append(model)
    return out


class SignedURL:
    """Meta's presigned URL, `https://host/*?Policy=…&Signature=…`; never printed in full.

    `str()` and `repr()` show the host only; `public(path)` is what messages name.
    """

    def __init__(self, url: str) -> None:
        url = url.strip().strip("'\"")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadUsageError(
                "the download URL must start with https://",
                hint="paste the whole URL from Meta's email (it contains a '*')",
            )
        if "*" not in parts.path:
            raise DownloadUsageError(
                f"the download URL for {parts.netloc} has no '*' where the file path goes",
                hint="paste the whole URL from Meta's email, unchanged (it contains a '*')",
            )
        self._url = url
        self.scheme, self.host = parts.scheme, parts.netloc

    def for_path(self, remote_path: str) -> str:
        """The URL to fetch: the first `*` before the query replaced by the remote path."""
        base, sep, query = self._url.partition("?")
        return base.replace("*", quote(remote_path), 1) + sep + query

    def public(self, remote_path: str) -> str:
        """Host and path, without the secret query string: safe to print."""
        return f"{self.scheme}://{self.host}/{remote_path}"

    def __repr__(self) -> str:
        return f"SignedURL({self.scheme}://{self.host}/*?…)"

    __str__ = __repr__


class _Retry(Exception):
    """A failure worth another attempt (dropped connection, timeout, 5xx); the .part is kept."""


def fetch(
    url: SignedURL,
    remote_path: str,
    dest: Path,
    *,
    quiet: bool = False,
    retries: int = 2,
    backoff: float = 1.0,
    timeout: float = 60.0,
    stream: TextIO | None = None,
) -> int:
    """Download one file to `dest`, continuing `dest.part` if there is one.

    A `dest` that exists is complete (files are renamed from `.part` only when whole) and is not
    fetched again. Returns the number of bytes transferred.

    Raises:
        LinkExpiredError: HTTP 403.
        DownloadError: any other HTTP error, a network failure after `retries` more attempts, or a
            write error.
    """
    if dest.exists():
        return 0
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the folder {dest.parent}: {e.strerror}", hint="choose another --out"
        ) from None
    part = dest.with_name(dest.name + ".part")
    moved = [0]  # bytes received, counted across attempts (a failed attempt's bytes stay in .part)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, remote_path, part, quiet, timeout, stream, moved)
            break
        except _Retry as e:
            if attempt == retries:
                raise DownloadError(
                    f"download of {url.public(remote_path)} failed: {e}",
                    hint="check the network connection and run the same command again: "
                    "finished files are kept and the partial file resumes",
                ) from None
            log.warning("%s: %s; retrying", url.public(remote_path), e)
            time.sleep(backoff * (attempt + 1))
    part.replace(dest)
    return moved[0]


def _fetch_once(
    url: SignedURL,
    remote_path: str,
    part: Path,
    quiet: bool,
    timeout: float,
    stream: TextIO | None,
    moved: list[int],
) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url.for_path(remote_path), headers=headers)
    public = url.public(remote_path)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # Range starts at the end: the .part may already be whole
            if _content_range(e.headers.get("Content-Range", ""))[1] == have:
                return
            part.unlink()
            raise _Retry("the partial file does not match the remote file; starting over") from None
        if e.code >= 500:  # the CDN having a bad moment: worth another try
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise _http_error(e.code, e.reason, public) from None
    except urllib.error.URLError as e:
        raise _Retry(f"cannot connect to {url.host} ({_reason(e.reason)})") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(f"connection to {url.host} failed ({_reason(e)})") from None

    with response:
        total = _int(response.headers.get("Content-Length"))
        mode = "wb"
        if have and response.status == 206:
            start, size = _content_range(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Retry("the server resumed at the wrong offset; starting over")
            mode, total = "ab", size
        elif have:
            log.info("%s: the server ignored the Range request; downloading it whole", public)
            have = 0
        got = 0
        label = PurePosixPath(remote_path).name
        try:
            with (
                _open(part, mode) as f,
                Progress(total, label, enabled=not quiet, initial=have, stream=stream) as bar,
            ):
                # read1: whatever has arrived (up to CHUNK), so .part keeps all received bytes
                while chunk := response.read1(CHUNK):
                    _write(f, chunk, part)
                    got += len(chunk)
                    moved[0] += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(
                f"connection lost after {format_bytes(have + got)} ({_reason(e)})"
            ) from None
    if total is not None and have + got != total:
        raise _Retry(f"connection closed after {have + got} of {total} bytes")


def _http_error(code: int, reason: str, public: str) -> DownloadError:
    if code == 403:
        return LinkExpiredError(
            f"the server refused {public} (HTTP 403 Forbidden): the download link has expired "
            "(Meta's links expire 24 hours after they are sent and allow a limited number of "
            "downloads) or it was not pasted in full",
            hint=f"request a new link at {NEW_LINK_URL} and run the command again with it; "
            "finished files are kept and partial files resume",
        )
    if code == 404:
        return DownloadError(
            f"not found on the server: {public} (HTTP 404)",
            hint="check --models: a link only serves the models (and Llama version) it was sent for",
        )
    return DownloadError(
        f"the server answered HTTP {code} {reason} for {public}",
        hint="run the same command again later; if it persists, request a new link at "
        + NEW_LINK_URL,
    )


def _content_range(value: str) -> tuple[int | None, int | None]:
    """'bytes 100-199/200' -> (100, 200); 'bytes */200' -> (None, 200)."""
    try:
        span, _, size = value.removeprefix("bytes ").partition("/")
        start = None if span == "*" else int(span.split("-")[0])
        return start, int(size)
    except ValueError:
        return None, None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _reason(e: object) -> str:
    # socket errors carry errno text; never str() an HTTPError (it may carry the URL).
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _open(path: Path, mode: str):
    try:
        return open(path, mode)
    except OSError as e:
        raise DownloadError(f"cannot write {path}: {e.strerror}") from None


def _write(f, chunk: bytes, path: Path) -> None:
    try:
        f.write(chunk)
    except OSError as e:
        raise DownloadError(
            f"cannot write {path}: {e.strerror}", hint="free some disk space or choose --out"
        ) from None


def read_checklist(path: Path) -> dict[str, str]:
    """`md5sum` output ('<md5>  <name>' per line) -> {name: md5}."""
    sums: dict[str, str] = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        md5, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")  # md5sum marks binary mode with '*'
        rel = PurePosixPath(name)
        ok = len(md5) == 32 and all(c in "0123456789abcdefABCDEF" for c in md5)
        if not ok or not name or rel.is_absolute() or ".." in rel.parts:
            raise ChecksumError(
                f"{path} line {i} is not '<md5>  <file name>': {line.strip()[:80]!r}",
                hint="delete it and run the same command again to download it afresh",
            )
        sums[str(rel)] = md5.lower()
    return sums


def md5_file(path: Path, quiet: bool = True, stream: TextIO | None = None) -> str:
    h = hashlib.md5(usedforsecurity=False)
    size = path.stat().st_size
    with (
        open(path, "rb") as f,
        Progress(size, f"md5 {path.name}", enabled=not quiet, stream=stream),
    ):
        while block := f.read(8 * CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str, label: str, *, quiet: bool, stream: TextIO | None) -> None:
    """Check one file's md5; a mismatching file is deleted so the next run fetches it afresh."""
    out = stream if stream is not None else sys.stderr
    # Hash bars only on a terminal, and only where hashing takes a while.
    show = not quiet and out.isatty() and path.stat().st_size > 256 * CHUNK
    got = md5_file(path, quiet=not show, stream=stream)
    if got != expected:
        path.unlink()
        raise ChecksumError(
            f"checksum mismatch for {label}: md5 {got}, but checklist.chk says {expected}; "
            "the bad file was deleted",
            hint="run the same command again to download it afresh; if it fails again, "
            f"request a new link at {NEW_LINK_URL}",
        )


def download_model(
    url: SignedURL,
    model: MetaModel,
    out_dir: Path,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    **fetch_options: float,
) -> int:
    """Fetch and md5-check one model into `out_dir/model.folder`. Returns the bytes transferred."""
    say = _sayer(quiet, stream)
    folder = out_dir / model.folder
    say(f"Downloading {model.name} into {folder}")
    transferred = 0
    sums: dict[str, str] = {}
    files = list(model.files)
    i = 0
    while i < len(files):
        name = files[i]
        dest = folder / name
        if dest.exists():
            say(f"{name}: already downloaded")
        transferred += fetch(
            url, f"{model.remote}/{name}", dest, quiet=quiet, stream=stream, **fetch_options
        )
        if name == "checklist.chk":
            sums = read_checklist(dest)
            # Meta's checklist is the authority on what a model is made of: fetch what it adds.
            files += [n for n in sums if n not in files]
        elif name in sums:
            verify(dest, sums[name], f"{model.folder}/{name}", quiet=quiet, stream=stream)
        elif name.endswith(".pth"):  # weights that cannot be checked are not trusted
            raise ChecksumError(
                f"{model.folder}/checklist.chk does not list {name}, so it cannot be verified",
                hint="delete checklist.chk and run the same command again to fetch it afresh",
            )
        else:
            log.warning("%s/%s is not in checklist.chk: not verified", model.folder, name)
        i += 1
    say(f"{model.folder}: {len(sums)} files match checklist.chk")
    return transferred


def download(
    url: SignedURL | str,
    models: list[MetaModel],
    out_dir: Path,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    **fetch_options: float,
) -> list[Path]:
    """Meta's download.sh: the licence files (Llama 3 links), then each model, md5-checked.

    Returns the model folders, in the order given.
    """
    url = url if isinstance(url, SignedURL) else SignedURL(url)
    out_dir = Path(out_dir)
    if any(m.family == "3" for m in models):
        _sayer(quiet, stream)("Downloading LICENSE and Acceptable Use Policy")
        for name in LLAMA3_ROOT_FILES:
            fetch(url, name, out_dir / name, quiet=quiet, stream=stream, **fetch_options)
    for model in models:
        download_model(url, model, out_dir, quiet=quiet, stream=stream, **fetch_options)
    return [out_dir / m.folder for m in models]


def _sayer(quiet: bool, stream: TextIO | None):
    def say(message: str) -> None:
        if not quiet:
            print(message, file=stream if stream is not None else sys.stderr, flush=True)

    return say
