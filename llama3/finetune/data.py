"""Training data: JSONL records -> token ids with labels -> padded or packed batches.

Records (one JSON object a line):
- `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with the model's own chat format
  (Meta's layout for Llama 3 tokenizers, the shipped template otherwise); labels on assistant
  turns only, each turn's end-of-turn token (`<|eot_id|>`, `<|im_end|>`, ...) included, so the
  model learns to stop. `train_on_prompt` labels everything.
- `{"prompt": ..., "completion": ...}`: strings are plain text (prompt + completion + EOS, labels
  on the completion and EOS); lists of messages are a conversation split the same way.
- `{"text": ...}`: plain text + EOS, every token labelled.

Every bad line is reported with its line number; an empty dataset is an error. A Hugging Face
`datasets` dataset with rows of the same fields works too (`datasets_source`), bad rows named by
their index. Padding has label
-100 and sits after the tokens it pads (right padding), so no real token attends to it and its id
never matters: pad is never EOS in any sense that could mask a label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidRequestError, Llama3Error
from ..tokenizer.base import BaseTokenizer
from .forward import IGNORE

log = logging.getLogger(__name__)

#: bad lines listed in one error before "... and N more"
_MAX_LISTED = 10


class DataError(InvalidRequestError):
    """The training or eval data has bad lines (all of them are named)."""


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]
    line: int

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class Batch:
    tokens: torch.Tensor  # (bsz, seqlen)
    labels: torch.Tensor  # (bsz, seqlen), IGNORE where no loss
    positions: torch.Tensor | None = None  # (bsz, seqlen) for packed rows
    segments: torch.Tensor | None = None  # (bsz, seqlen) for packed rows
    n_tokens: int = 0  # real (not padding) tokens

    @property
    def n_labels(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


class Renderer:
    """Turns records into `Example`s with the model's tokenizer and chat format."""

    def __init__(
        self, tokenizer: BaseTokenizer, formatter: Any, *, train_on_prompt: bool = False
    ) -> None:
        self.tok, self.formatter, self.train_on_prompt = tokenizer, formatter, train_on_prompt
        self.stops = set(tokenizer.stop_tokens)

    def example(self, record: Any, line: int) -> Example:
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        if "messages" in record:
            return self._chat(_messages(record["messages"], "messages"), line)
        if "prompt" in record or "completion" in record:
            prompt, completion = record.get("prompt"), record.get("completion")
            if isinstance(prompt, list) and isinstance(completion, list):
                msgs = _messages(prompt, "prompt") + _messages(completion, "completion")
                return self._chat(msgs, line, labelled_from=len(prompt))
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise ValueError("'prompt' and 'completion' must both be strings or message lists")
            if not completion:
                raise ValueError("'completion' is empty")
            p = self.tok.encode_prompt(prompt)
            c = self.tok.encode(completion, bos=False, eos=False) + self._eos()
            return self._split(p, c, line)
        if "text" in record:
            text = record["text"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError("'text' must be a non-empty string")
            ids = self.tok.encode_prompt(text) + self._eos()
            return Example(ids, list(ids), line)
        keys = ", ".join(sorted(record)) or "none"
        raise ValueError(f"no 'messages', 'prompt'/'completion' or 'text' key (keys: {keys})")

    def _eos(self) -> list[int]:
        return [self.tok.eos_id] if self.tok.eos_id is not None else []

    def _split(self, prompt: list[int], completion: list[int], line: int) -> Example:
        labels = list(prompt) if self.train_on_prompt else [IGNORE] * len(prompt)
        return Example(prompt + completion, labels + completion, line)

    def _chat(self, msgs: list[dict], line: int, labelled_from: int = 0) -> Example:
        """Render turn by turn: each assistant turn is what the full prefix adds after the
        prompt for it (the generation header), up to and including its end-of-turn token."""
        if self.formatter is None:
            raise ValueError("this model has no chat format, so 'messages' cannot be rendered")
        if not any(m["role"] == "assistant" for m in msgs[labelled_from:]):
            raise ValueError("no assistant message to learn from")
        enc = self.formatter.encode_dialog_prompt
        ids: list[int] = []
        labels: list[int] = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant" or k < labelled_from:
                continue
            prompt = enc(msgs[:k], add_generation_prompt=True)
            full = enc(msgs[: k + 1], add_generation_prompt=False)
            if full[: len(prompt)] != prompt or prompt[: len(ids)] != ids:
                raise ValueError(
                    "the chat template does not render this conversation as a growing prefix, "
                    "so its assistant turns cannot be told apart"
                )
            labels += self._prompt_labels(prompt[len(ids) :])
            turn = full[len(prompt) :]
            end = next((i + 1 for i, t in enumerate(turn) if t in self.stops), len(turn))
            # what a template adds after the end-of-turn token (a newline) is not learned
            labels += turn[:end] + self._prompt_labels(turn[end:])
            ids = full
        rest = enc(msgs, add_generation_prompt=False)[len(ids) :]
        labels += self._prompt_labels(rest)
        ids += rest
        return Example(ids, labels, line)

    def _prompt_labels(self, ids: list[int]) -> list[int]:
        return list(ids) if self.train_on_prompt else [IGNORE] * len(ids)


def _messages(value: Any, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"{key}[{i}] is not an object with a 'role'")
        if m["role"] not in ("system", "user", "assistant", "tool", "ipython"):
            raise ValueError(f"{key}[{i}] has unknown role {m['role']!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{key}[{i}] has no string 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_examples(path: str | Path, renderer: Renderer, max_seq_len: int) -> list[Example]:
    """Every record of the JSONL file (or Hugging Face dataset, `datasets_source`) `path` as an
    `Example`; one `DataError` lists all bad lines (rows). Examples longer than `max_seq_len`
    are cut to it, with a warning naming them."""
    from . import datasets_source

    spec = str(path)
    if datasets_source.is_dataset(spec):
        where, fix = "row", "each needs 'messages', 'prompt'+'completion' or 'text'"
        empty = "give it rows of such records"
        records = ((i, r, None) for i, r in datasets_source.rows(spec, DataError))
    else:
        where, fix = "line", "each is one JSON object with 'messages', 'prompt'+'completion' or "
        fix += "'text'"
        empty = "put one JSON object per line"
        records = _jsonl_records(Path(path))
    out, bad, cut = [], [], []
    for n, record, broken in records:
        try:
            if broken is not None:
                raise ValueError(broken)
            ex = renderer.example(record, n)
        except Llama3Error as e:  # a message the chat format refused
            bad.append(f"{where} {n}: {e.message}")
            continue
        except ValueError as e:
            bad.append(f"{where} {n}: {e}")
            continue
        if len(ex.ids) > max_seq_len:
            cut.append(n)
            ex = Example(ex.ids[:max_seq_len], ex.labels[:max_seq_len], n)
        if ex.n_labels == 0:
            bad.append(f"{where} {n}: no token to learn from within --max-seq-len {max_seq_len}")
            continue
        out.append(ex)
    if bad:
        more = f"; ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DataError(
            f"{spec}: {len(bad)} bad {where}(s): " + "; ".join(bad[:_MAX_LISTED]) + more,
            f"fix those {where}s: {fix}",
            "data",
        )
    if not out:
        raise DataError(f"{spec} holds no examples", empty, "data")
    if cut:
        log.warning(
            "%d example(s) longer than --max-seq-len %d were cut (%ss %s)",
            len(cut),
            max_seq_len,
            where,
            ", ".join(map(str, cut[:20])),
        )
    return out


def _jsonl_records(p: Path):
    """(line number, parsed object or None, what is wrong with the line or None)."""
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {p}", "pass a JSONL file", "data") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {p}: {e}", "pass a UTF-8 JSONL file", "data") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as e:
            yield n, None, f"invalid JSON ({e.msg} at column {e.colno})"


def pad_batch(examples: Sequence[Example]) -> Batch:
    """Right-padded rows: pad id 0 with label -100 (no real token ever attends to a pad)."""
    length = max(len(e.ids) for e in examples)
    tokens = torch.zeros(len(examples), length, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        tokens[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.ids)] = torch.tensor(e.labels)
    return Batch(tokens, labels, n_tokens=sum(len(e.ids) for e in examples))


def pack_rows(examples: Sequence[Example], max_seq_len: int) -> list[list[Example]]:
    """Examples in order, greedily filled into rows of at most `max_seq_len` tokens."""
    rows: list[list[Example]] = []
    used = max_seq_len + 1
    for e in examples:
        if used + len(e.ids) > max_seq_len:
            rows.append([])
            used = 0
        rows[-1].append(e)
        used += len(e.ids)
    return rows


def packed_batch(rows: Sequence[Sequence[Example]]) -> Batch:
    """Rows of several examples each: positions restart and segment ids separate the examples;
    each pad is a segment of its own (attending only to itself), labels -100."""
    length = max(sum(len(e.ids) for e in row) for row in rows)
    bsz = len(rows)
    tokens = torch.zeros(bsz, length, dtype=torch.long)
    labels = torch.full((bsz, length), IGNORE, dtype=torch.long)
    positions = torch.zeros(bsz, length, dtype=torch.long)
    segments = torch.arange(length).repeat(bsz, 1) + length  # pads: unique ids
    for i, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = len(e.ids)
            tokens[i, at : at + n] = torch.tensor(e.ids)
            # the first token of an example is never a target of the one before it
            labels[i, at : at + n] = torch.tensor([IGNORE, *e.labels[1:]])
            positions[i, at : at + n] = torch.arange(n)
            segments[i, at : at + n] = s
            at += n
    n = sum(len(e.ids) for row in rows for e in row)
    return Batch(tokens, labels, positions, segments, n_tokens=n)


def groups(items: Sequence, lengths: Sequence[int], batch_size: int, batch_tokens: int | None):
    """`items` in order, cut into runs of `batch_size` (sequences), or with `batch_tokens` into
    runs whose padded size (rows x longest row) stays within it (at least one row each)."""
    if batch_tokens is None:
        return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    out: list[list] = []
    longest = 0
    for item, n in zip(items, lengths):
        if out and max(longest, n) * (len(out[-1]) + 1) <= batch_tokens:
            out[-1].append(item)
            longest = max(longest, n)
        else:
            out.append([item])
            longest = n
    return out


def batches(
    examples: Sequence[Example],
    batch_size: int,
    *,
    packing: bool = False,
    max_seq_len: int = 2048,
    batch_tokens: int | None = None,
) -> list[Batch]:
    """The batches of one pass over `examples`, in their order: `batch_size` sequences each, or
    with `batch_tokens` as many as fit in that many (padded) tokens."""
    if packing:
        rows = pack_rows(examples, max_seq_len)
        lengths = [sum(len(e.ids) for e in row) for row in rows]
        return [packed_batch(g) for g in groups(rows, lengths, batch_size, batch_tokens)]
    lengths = [len(e.ids) for e in examples]
    return [pad_batch(g) for g in groups(examples, lengths, batch_size, batch_tokens)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of `epoch` (the same for a resumed run)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()
