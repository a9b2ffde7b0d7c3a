"""IncrementalDetokenizer: UTF-8-safe deltas, stop strings, hold-back, and streamed == one-shot."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import tiktoken
import tokenizers
from conftest import HF_TOKENIZER_JSON, TOKENIZER_MODEL, tiktoken_oracle

from llama3.errors import InvalidRequestError
from llama3.tokenizer.base import BaseTokenizer
from llama3.tokenizer.streaming import IncrementalDetokenizer
from llama3.tokenizer.tiktoken_bpe import Tokenizer

EOT, BOS = 128009, 128000


@pytest.fixture(scope="module")
def tok(shared_llama3) -> Tokenizer:
    return Tokenizer(TOKENIZER_MODEL)


@pytest.fixture(scope="module")
def plain(shared_llama3) -> tiktoken.Encoding:
    """Independent oracle: tiktoken over the same file (specials 128000.. by their 3.1 ids)."""
    specials = {"<|begin_of_text|>": BOS, "<|eot_id|>": EOT, "<|reserved_special_token_0|>": 128002}
    return tiktoken_oracle(specials)


class HFVocab(BaseTokenizer):
    """The HF `tokenizers` vocabulary with only the BaseTokenizer API: no `decode_bytes`, so the
    detokenizer takes its text-window path."""

    def __init__(self) -> None:
        super().__init__()
        self.hf = tokenizers.Tokenizer.from_file(str(HF_TOKENIZER_JSON))
        self.special_tokens = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items()}
        self.n_words, self.bos_id, self.eos_id = self.hf.get_vocab_size(), BOS, 128001
        self.decode_calls: list[int] = []

    def encode(self, s, *, bos, eos, allowed_special=frozenset(), disallowed_special=()):
        return [*([BOS] if bos else []), *self.hf.encode(s, add_special_tokens=False).ids]

    def decode(self, ids: Sequence[int]) -> str:
        self.decode_calls.append(len(ids))
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self.hf.id_to_token(token_id)


@pytest.fixture(scope="module")
def hf_vocab(shared_llama3) -> HFVocab:
    return HFVocab()


def stream(tokenizer, ids, **kw) -> tuple[list[str], str, IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, **kw)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.flush(), detok


def expected_text(plain, ids, stop=(), skip_special=True) -> tuple[str, int | None]:
    """The spec, from one-shot decodes only: drop specials, find the first token after which a stop
    string appears in the text, cut at the earliest stop there. Returns (text, stop token index)."""
    kept = [(k, i) for k, i in enumerate(ids) if not (skip_special and i >= BOS)]
    for n in range(1, len(kept) + 1):
        text = plain.decode([i for _, i in kept[:n]])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[: min(hits)], kept[n - 1][0]
    return plain.decode([i for _, i in kept]), None


# ---- UTF-8 ------------------------------------------------------------------------------------
def _complete_prefix(data: bytes) -> str:
    """The text of the longest prefix of `data` that ends on a character boundary."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise AssertionError("not UTF-8 text")


@pytest.mark.parametrize("text", ["llama 🦙 says 你好", "👨‍👩‍👧‍👦 family", " 𝕳𝖊𝖑𝖑𝖔 中文字符"])
def test_characters_split_across_tokens(tok, hf_vocab, plain, text):
    ids = plain.encode(text)
    pieces = [plain.decode_single_token_bytes(i) for i in ids]
    assert any(_complete_prefix(p) != p.decode("utf-8", "replace") for p in pieces)  # real splits
    # Byte path: each delta is exactly the newly completed characters.
    deltas, tail, detok = stream(tok, ids)
    texts = [_complete_prefix(b"".join(pieces[: k + 1])) for k in range(len(ids))]
    assert deltas == [b[len(a) :] for a, b in zip(["", *texts], texts)]
    assert tail == "" and detok.text == text
    # Text-window path: same text, never a U+FFFD on the way.
    deltas, tail, _ = stream(hf_vocab, ids)
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) + tail == text


def test_cjk_from_single_byte_tokens(tok, plain):
    ids = [plain.encode_single_token(bytes([b])) for b in "中文".encode()]
    deltas, tail, _ = stream(tok, ids)
    assert deltas == ["", "", "中", "", "", "文"] and tail == ""


@pytest.mark.parametrize("tokenizer", ["tiktoken", "hf"])
def test_dangling_bytes_at_flush(tok, hf_vocab, plain, tokenizer):
    t = tok if tokenizer == "tiktoken" else hf_vocab
    ids = [
        *plain.encode("ok "),
        plain.encode_single_token(b"\xe4"),
        plain.encode_single_token(b"\xb8"),
    ]
    deltas, tail, _ = stream(t, ids)
    assert "".join(deltas) == "ok "
    assert "".join(deltas) + tail == plain.decode(ids) == "ok \ufffd"
    # A byte that can never start a character is final at once, as U+FFFD.
    bad = [plain.encode_single_token(b"\xff"), *plain.encode("x")]
    deltas, tail, _ = stream(t, bad)
    assert "".join(deltas) + tail == "\ufffdx"
    if t is tok:  # the byte path knows at once; the text-window path waits for the next token
        assert deltas == ["\ufffd", "x"]


# ---- stop strings -----------------------------------------------------------------------------
def test_stop_string_across_tokens(tok, plain):
    text = "The answer is 42.\n\nUser: next question"
    ids = plain.encode(text)
    stop = "\n\nUser:"
    want, at = expected_text(plain, ids, [stop])
    assert want == "The answer is 42." and at is not None
    deltas, tail, detok = stream(tok, ids, stop=[stop, "never"])
    assert "".join(deltas) + tail == want == detok.text
    assert detok.stop_string == stop
    first_stopped = next(k for k, _ in enumerate(ids) if _stopped_after(tok, ids[: k + 1], stop))
    assert first_stopped == at
    assert all(d == "" for d in deltas[at + 1 :]) and tail == ""
    assert detok.token_ids == ids


def _stopped_after(tok, ids, stop) -> bool:
    d = IncrementalDetokenizer(tok, stop=[stop])
    for i in ids:
        d.add(i)
    return d.stopped


def test_hold_back_until_decided(tok, plain):
    ids = [
        *plain.encode("Answer"),
        *plain.encode("\n\n"),
        *plain.encode("Use"),
        *plain.encode(" it"),
    ]
    deltas, tail, detok = stream(tok, ids, stop="\n\nUser:")
    # "\n\n" and "\n\nUse" could still become the stop string, so they wait.
    assert deltas == ["Answer", "", "", "\n\nUse it"]
    assert tail == "" and not detok.stopped and detok.stop_string is None
    # At the end of generation a held possible prefix is released.
    deltas, tail, detok = stream(tok, ids[:-1], stop="\n\nUser:")
    assert deltas == ["Answer", "", ""] and tail == "\n\nUse" and detok.text == "Answer\n\nUse"


def test_stop_inside_one_token_and_earliest_wins(tok, plain):
    deltas, tail, detok = stream(tok, plain.encode("say hello world"), stop=["world", "hello"])
    assert "".join(deltas) + tail == "say " and detok.stop_string == "hello"


# ---- special tokens ---------------------------------------------------------------------------
def test_skip_special(tok, plain):
    ids = [BOS, *plain.encode("Hi"), EOT, *plain.encode(" there")]
    assert "".join(stream(tok, ids)[0]) == "Hi there"
    deltas, tail, _ = stream(tok, ids, skip_special=False)
    assert "".join(deltas) + tail == "<|begin_of_text|>Hi<|eot_id|> there" == tok.decode(ids)
    # A stop string can only see special-token text when specials are kept.
    assert not stream(tok, ids, stop=["<|eot_id|>"])[2].stopped
    kept = stream(tok, ids, stop=["<|eot_id|>"], skip_special=False)
    assert kept[2].stopped and kept[2].text == "<|begin_of_text|>Hi"


# ---- the invariant: streamed == one-shot ------------------------------------------------------
STOPS = ["\n\n", "END", "ab", "🦙", "你好世界"]


def _random_ids(rng: random.Random, pool: list[int]) -> list[int]:
    n = rng.randint(0, 40)
    return [rng.choice(pool) if rng.random() < 0.85 else rng.randrange(128_000) for _ in range(n)]


def _pool(plain) -> list[int]:
    words = [
        "a",
        "b",
        "ab",
        "E",
        "N",
        "D",
        "EN",
        " END",
        "\n",
        "\n\n",
        " the",
        "你好",
        "世界",
        " 🦙",
        "!",
    ]
    pool = [t for w in words for t in plain.encode(w)]
    pool += [plain.encode_single_token(bytes([b])) for b in b"\xe4\xb8\xad\xf0\x9f\xa6\x99\x80\xff"]
    return pool + [BOS, EOT, 128002]  # specials named alike in every table


@pytest.mark.parametrize("tokenizer", ["tiktoken", "hf"])
@pytest.mark.parametrize("skip_special", [True, False])
def test_streamed_equals_one_shot(tok, hf_vocab, plain, tokenizer, skip_special):
    t = tok if tokenizer == "tiktoken" else hf_vocab
    rng = random.Random(20240611)
    pool = _pool(plain)
    for trial in range(300):
        ids = _random_ids(rng, pool)
        stop = rng.sample(STOPS, rng.randint(0, 3))
        want, at = expected_text(plain, ids, stop, skip_special)
        deltas, tail, detok = stream(t, ids, stop=stop, skip_special=skip_special)
        assert "".join(deltas) + tail == want == detok.text, (trial, ids, stop)
        assert detok.stopped == (at is not None)
        if at is not None:
            assert "".join(deltas[: at + 1]) == want and not any(deltas[at + 1 :])
        # Mid-stream deltas never carry a U+FFFD that the one-shot text does not have.
        assert "".join(deltas).count("\ufffd") <= want.count("\ufffd")


# ---- bounded work -----------------------------------------------------------------------------
def test_work_per_token_is_bounded(tok, hf_vocab, plain):
    ids = plain.encode("Lorem ipsum dolor sit amet, 你好 🦙 " * 500)
    assert len(ids) > 5000

    class Spy(Tokenizer):
        def __init__(self) -> None:  # share the loaded vocabulary instead of re-reading it
            self.__dict__.update(tok.__dict__)
            self.widths: list[int] = []

        def decode_bytes(self, ids: Sequence[int]) -> bytes:
            self.widths.append(len(ids))
            return super().decode_bytes(ids)

    spy = Spy()
    stream(spy, ids, stop=["zzz"])
    assert max(spy.widths) == 1
    hf_vocab.decode_calls.clear()
    deltas, tail, _ = stream(hf_vocab, ids, stop=["zzz"])
    assert max(hf_vocab.decode_calls) <= 40
    assert "".join(deltas) + tail == plain.decode(ids)


# ---- API details ------------------------------------------------------------------------------
def test_lifecycle_and_validation(tok, plain):
    a, x, b = plain.encode("a")[0], plain.encode("x")[0], plain.encode("b")[0]
    detok = IncrementalDetokenizer(tok, stop=["x"])
    assert [detok.add(a), detok.add(x), detok.add(b)] == ["a", "", ""]
    assert detok.stopped and detok.stop_string == "x" and detok.token_ids == [a, x, b]
    assert detok.flush() == "" and detok.flush() == "" and detok.text == "a"
    with pytest.raises(RuntimeError, match="flush"):
        detok.add(1)
    for bad in ([""], [None], ["ok", ""]):
        with pytest.raises(InvalidRequestError, match="stop") as e:
            IncrementalDetokenizer(tok, stop=bad)
        assert e.value.param == "stop"
