"""`llama3 convert` on the command line: progress on stderr, a last line naming the output and its
size, `--json`; bad input is one `error: … (hint: …)` line (exit 2), never a traceback."""

from __future__ import annotations

import json

import pytest

from .helpers import run_cli


def test_converts_and_names_the_output_and_its_size(tiny, work):
    out = work / "cli-meta2"
    r = run_cli(str(tiny.path("3.0", "hf")), "--to", "meta", "--shards", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["writing consolidated.00.pth", "writing consolidated.01.pth"]
    (line,) = r.stdout.splitlines()
    assert line.startswith(f"wrote {out} (") and "MiB; meta, f32, 2 weight files) from hf" in line
    assert sorted(p.name for p in out.iterdir()) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
        "tokenizer.model",
    ]


def test_json_summary(tiny, work):
    out = work / "cli.gguf"
    r = run_cli(
        str(tiny.path("3.2", "meta")), "--to", "gguf", "--dtype", "f16", "--out", str(out), "--json"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (
        summary["to"] == "gguf" and summary["dtype"] == "f16" and summary["files"] == ["cli.gguf"]
    )
    assert summary["bytes"] == out.stat().st_size


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "error: no source checkpoint given"),
        (["{src}", "--out", "{out}"], "error: --to is missing"),
        (
            ["{work}/no-such-model", "--to", "hf", "--out", "{out}"],
            "error: no such file or directory",
        ),
        (
            ["{src}", "--to", "meta", "--shards", "3", "--out", "{out}"],
            "error: --shards 3 does not divide n_heads 4",
        ),
        (
            ["{src}", "--to", "meta", "--shards", "two", "--out", "{out}"],
            "error: --shards must be a whole number",
        ),
        (
            ["{src}", "--to", "gguf", "--dtype", "q4_k", "--out", "{out}.gguf"],
            "error: unknown --dtype 'q4_k'",
        ),
        (
            ["{src}", "--to", "hf", "--dtype", "q8_0", "--out", "{out}"],
            "error: --dtype q8_0 is a GGUF block format",
        ),
        (["{src}", "--to", "gguf", "--out", "{out}"], "does not end in .gguf"),
        (
            ["{src}", "--to", "hf", "--shards", "2", "--out", "{out}"],
            "error: --shards applies to Meta",
        ),
        (["{src}", "--to", "safetensors", "--out", "{out}"], "error: unknown output format"),
        (["{src}", "--to", "hf", "--out", "{src}"], "already exists"),
        (["{src}", "--to", "hf", "--out", "{work}/missing-parent/x"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line(tiny, work, capsys, args, message):
    from llama3.cli import main

    src = tiny.path("3.0", "meta")
    fill = {"src": src, "out": work / "cli-bad", "work": work}
    code = main(["convert", *(a.format(**fill) for a in args)])
    err = capsys.readouterr()
    assert code in (1, 2), err.err
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], err.err
    assert message in lines[0]
    assert err.out == ""
    assert not (work / "cli-bad").exists() and not list(work.glob("cli-bad*"))


def test_errors_in_a_real_process(tiny, work):
    r = run_cli(
        str(tiny.path("3.0", "meta")), "--to", "meta", "--shards", "3", "--out", str(work / "x3")
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (
        "error: --shards 3 does not divide n_heads 4 "
        "(hint: use a shard count that divides 4 (one of 1, 2, 4))\n"
    )
    r = run_cli()
    assert r.returncode == 2 and r.stderr.startswith("error: no source checkpoint given (hint: ")
