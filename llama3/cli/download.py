"""`llama3 download`: Meta's signed-URL download, or a Hugging Face hub repo.

`llama3 download` alone asks for the URL from Meta's email and the model list, as Meta's
`download.sh` does; `--url` and `--models` answer those questions up front. With a repo id
(`llama3 download meta-llama/Llama-3.2-1B-Instruct`) it downloads from the hub instead. Prompts and
progress go to stderr; stdout gets only the downloaded folders, one per line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..download import DownloadUsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repo_id",
        nargs="?",
        help="a Hugging Face repo id (owner/name); without it, Meta's signed-URL download",
    )
    meta = p.add_argument_group("Meta's signed URL (asked for when not given)")
    meta.add_argument("--url", help="the download URL from Meta's email (it contains a '*')")
    meta.add_argument(
        "--models",
        help="comma-separated: 8B,8B-instruct,70B,70B-instruct (Llama 3 links) or Meta model ids "
        "such as Llama3.1-8B-Instruct, Llama3.2-1B; empty = the four Llama 3 models",
    )
    hub = p.add_argument_group("Hugging Face hub")
    hub.add_argument(
        "--original", action="store_true", help="only Meta's checkpoint under original/"
    )
    hub.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--out",
        type=Path,
        help="target folder (default: the current folder for Meta links, the HF cache for repos)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")


def run(args: argparse.Namespace) -> int:
    try:
        folders = _hub(args) if args.repo_id else _meta(args)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: run the same command again to resume (finished files are kept)",
            file=sys.stderr,
        )
        return 130
    for folder in folders:
        print(folder)
    return 0


def _hub(args: argparse.Namespace) -> list[Path]:
    from ..download.hf_hub import download_repo, parse_repo_id

    if args.url or args.models is not None:
        raise DownloadUsageError(
            "a repo id and --url/--models cannot be combined",
            hint="give a repo id for the Hugging Face hub, or --url for Meta's signed URL",
        )
    repo_id = parse_repo_id(args.repo_id)
    path = download_repo(
        repo_id, out=args.out, original=args.original, revision=args.revision, quiet=args.quiet
    )
    # --original: the checkpoint to load is the original/ folder (Meta's layout) inside the repo.
    folder = path / "original" if args.original else path
    if not args.quiet:
        model = repo_id if args.out is None and not args.original else folder
        print(f"done: try `llama3 inspect {model}`", file=sys.stderr)
    return [folder]


def _meta(args: argparse.Namespace) -> list[Path]:
    from ..download import meta

    if args.original or args.revision:
        raise DownloadUsageError(
            "--original and --revision apply to Hugging Face repo ids only",
            hint="e.g. llama3 download meta-llama/Llama-3.2-1B-Instruct --original",
        )
    url = meta.SignedURL(args.url if args.url else _ask(meta.URL_PROMPT, "--url"))
    spec = args.models if args.models is not None else _ask(meta.MODELS_PROMPT, "--models")
    models = meta.parse_models(spec)
    out = args.out if args.out is not None else Path(".")
    folders = meta.download(url, models, out, quiet=args.quiet)
    if not args.quiet:
        print(f"done: try `llama3 inspect {folders[-1]}`", file=sys.stderr)
    return folders


def _ask(prompt: str, flag: str) -> str:
    """Meta's download.sh questions, asked on stderr so stdout stays machine-readable."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise DownloadUsageError(
            f"no answer to {prompt.split(' (')[0].rstrip(': ')!r} (end of input)",
            hint=f"answer the question or pass {flag}",
        )
    return line.strip()
