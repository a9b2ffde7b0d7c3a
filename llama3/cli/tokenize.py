"""`llama3 tokenize [MODEL] TEXT`: the token ids of a text and their pieces, as the model sees them.

Loads only the tokenizer (for GGUF files, only the metadata), never the weights. Special-token text
(`<|eot_id|>`) stays plain text unless `--special` is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidRequestError
from ..tokenizer.base import BaseTokenizer
from .args import resolve_model_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="+", metavar="[MODEL] TEXT", help="model (optional) and text")
    p.add_argument(
        "--model",
        "-m",
        help="Meta checkpoint dir, Hugging Face dir or .gguf file (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--special", action="store_true", help="turn special-token text into special tokens"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def split_words(args: argparse.Namespace) -> tuple[str | None, str]:
    """(model, text) from `[MODEL] TEXT` and --model."""
    words = args.words
    if len(words) > 2 or (len(words) == 2 and args.model):
        raise InvalidRequestError(
            f"expected [MODEL] TEXT, got {len(words)} arguments"
            + (" and --model" if args.model else ""),
            'quote the text: llama3 tokenize MODEL "some text"',
        )
    if len(words) == 2:
        return words[0], words[1]
    return args.model, words[0]


def load_tokenizer_only(path: Path) -> BaseTokenizer:
    """The tokenizer that loading `path` would use, without reading any weights."""
    from ..checkpoint import detect_format, read_checkpoint

    fmt, p = detect_format(path)
    if fmt == "gguf":
        # The fast metadata reader: gguf.GGUFReader indexes every field, seconds for 128K vocabs.
        from ..tokenizer.gguf_vocab import read_gguf_metadata, tokenizer_from_gguf

        return tokenizer_from_gguf(read_gguf_metadata(p))
    from ..loader import load_tokenizer_for

    return load_tokenizer_for(read_checkpoint(p))


def tokenize(tok: BaseTokenizer, text: str, special: bool) -> tuple[list[int], bool]:
    """Ids of `text` as a prompt (BOS when the tokenizer adds one), and whether BOS was added."""
    bos = bool(tok.add_bos and tok.bos_id is not None)
    ids = tok.encode(text, bos=bos, eos=False, allowed_special="all" if special else frozenset())
    return ids, bos


def run(args: argparse.Namespace) -> int:
    spec, text = split_words(args)
    tok = load_tokenizer_only(resolve_model_path(spec))
    ids, bos = tokenize(tok, text, args.special)
    pieces = [tok.id_to_piece(i) for i in ids]
    if args.json:
        out = {"ids": ids, "pieces": pieces, "count": len(ids), "bos_added": bos}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for i, piece in zip(ids, pieces):
        print(f"{i:>8}  {json.dumps(piece, ensure_ascii=False)}")
    print(
        f"{len(ids)} tokens"
        + (f" (BOS {tok.id_to_piece(tok.bos_id)} added)" if bos else " (no BOS added)")
    )
    return 0
