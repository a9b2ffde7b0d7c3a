"""Labels and data errors: assistant tokens and their end-of-turn token are the only labels by
default (in Meta's layout, a Jinja template, and SmolLM2's ChatML), padding is never labelled,
packed examples never see each other, and every bad JSONL line is named."""

from __future__ import annotations

import pytest
import torch

from llama3.cli import main
from llama3.finetune import IGNORE, DataError, Renderer, loss_sum, read_examples
from llama3.finetune.data import pack_rows, packed_batch, pad_batch
from llama3.tokenizer import chat_formatter, load_tokenizer

from .helpers import chat_records, load_tiny, write_jsonl

DIALOG = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The labelled stretches, as token ids."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab == IGNORE:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == t
            cur.append(t)
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("source", ["meta", "hf-template"])
def test_llama3_labels_are_assistant_turns_with_eot(tiny, shared_llama3, source):
    if source == "meta":  # Meta's tiktoken tokenizer: Meta's ChatFormat
        tok = load_tokenizer(shared_llama3 / "tokenizer.model")
    else:  # the Llama 3.1 tokenizer.json + its Jinja chat template
        tok = load_tokenizer(tiny.path("3.1", "hf"))
    eot = tok.special_tokens["<|eot_id|>"]
    ex = Renderer(tok, chat_formatter(tok)).example({"messages": DIALOG}, 1)
    want = [tok.encode(m["content"], bos=False, eos=False) + [eot] for m in DIALOG[2::2]]
    assert _runs(ex.ids, ex.labels) == want
    assert ex.ids == chat_formatter(tok).encode_dialog_prompt(DIALOG, add_generation_prompt=False)
    every = Renderer(tok, chat_formatter(tok), train_on_prompt=True).example(
        {"messages": DIALOG}, 1
    )
    assert every.labels == every.ids


def test_smollm2_labels_end_with_im_end_not_the_newline(smollm2_path):
    tok = load_tokenizer(smollm2_path)
    im_end = tok.special_tokens["<|im_end|>"]
    ex = Renderer(tok, chat_formatter(tok)).example({"messages": DIALOG}, 1)
    runs = _runs(ex.ids, ex.labels)
    assert [tok.decode(r[:-1]) for r in runs] == ["Hello! How can I help?", "Blue."]
    assert all(r[-1] == im_end for r in runs)
    assert ex.labels[-1] == IGNORE and ex.ids[-1] != im_end  # the template's "\n" after it


def test_padding_is_never_labelled_and_pad_is_not_eos(shared_llama3):
    tok = load_tokenizer(shared_llama3 / "tokenizer.model")
    r = Renderer(tok, chat_formatter(tok))
    short = r.example({"prompt": "2+2=", "completion": "4"}, 1)
    long = r.example({"text": "a much longer plain text example to pad the other one"}, 2)
    b = pad_batch([short, long])
    n = len(short.ids)
    assert (b.labels[0, n:] == IGNORE).all() and (b.tokens[0, n:] == 0).all()
    assert short.labels[-1] == tok.eos_id  # the completion's EOS is learned
    assert short.labels[: len(tok.encode_prompt("2+2="))] == [IGNORE] * len(
        tok.encode_prompt("2+2=")
    )
    assert b.labels[1].tolist() == long.labels  # plain text: every token


def test_packed_examples_do_not_attend_across_boundaries(tiny):
    lm = load_tiny(tiny.path("3.1", "hf"))
    r = Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))
    exs = [r.example(rec, i) for i, rec in enumerate(chat_records(4))]
    rows = pack_rows(exs, max_seq_len=10_000)
    assert len(rows) == 1 and len(rows[0]) == 4
    with torch.no_grad():
        packed, n = loss_sum(lm.model, *_tensors(packed_batch(rows)))
        alone = [loss_sum(lm.model, *_tensors(pad_batch([e]))) for e in exs]
    assert n == sum(k for _, k in alone)
    assert abs(float(packed) - sum(float(s) for s, _ in alone)) < 1e-3 * float(packed)


def _tensors(b):
    return b.tokens, b.labels, b.positions, b.segments


def test_every_bad_line_is_named(shared_llama3, tmp_path):
    tok = load_tokenizer(shared_llama3 / "tokenizer.model")
    r = Renderer(tok, chat_formatter(tok))
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            chat_records(1)[0],
            '{"messages": [',
            {"input": "x"},
            {"messages": [{"role": "user", "content": "no answer"}]},
            "",
            {"messages": [{"role": "assistant", "content": 3}]},
            {"messages": [{"role": "robot", "content": "x"}]},
        ],
    )
    with pytest.raises(DataError) as e:
        read_examples(f, r, 512)
    msg = e.value.message
    assert "5 bad line(s)" in msg and "line 1:" not in msg
    assert "line 2: invalid JSON" in msg
    assert "line 3: no 'messages', 'prompt'/'completion' or 'text' key (keys: input)" in msg
    assert "line 4: no assistant message" in msg
    assert "line 6: messages[0] has no string 'content'" in msg
    assert "line 7: messages[0] has unknown role 'robot'" in msg
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(write_jsonl(tmp_path / "e.jsonl", [""]), r, 512)


def test_bad_data_is_one_error_line_from_the_cli(tiny, tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", [chat_records(1)[0], "not json"])
    argv = ["finetune", "--model", str(tiny.path("3.1", "hf")), "--data", str(f)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "line 2: invalid JSON" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_batch_tokens_bounds_each_padded_micro_batch():
    from llama3.finetune import batches
    from llama3.finetune.data import Example

    exs = [Example(list(range(5 + i % 7)), list(range(5 + i % 7)), i) for i in range(23)]
    for packing in (False, True):
        got = batches(exs, 2, packing=packing, max_seq_len=20, batch_tokens=30)
        assert all(b.tokens.numel() <= 30 for b in got)
        assert sum(b.n_tokens for b in got) == sum(len(e.ids) for e in exs)  # none lost
    by_rows = batches(exs, 2)
    assert [b.tokens.shape[0] for b in by_rows] == [2] * 11 + [1]
