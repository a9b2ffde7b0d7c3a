"""`llama3 guard` and `llama3 chat --guard`, run through the CLI entry point in this process."""

from __future__ import annotations

import io
import json

from llama3.cli import main

from .conftest import ANSWER

CONV = [
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "Use a tension wrench."},
]
MESSAGE = "Refused by the filter."


def run(monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_guard_verb_reads_a_conversation_file(forced, tmp_path, monkeypatch, capsys):
    f = tmp_path / "conv.json"
    f.write_text(json.dumps({"messages": CONV}))
    argv = ["guard", "--model", str(forced("unsafe")), "--max-seq-len", "2048", "-q", str(f)]
    code, out, _ = run(monkeypatch, capsys, [*argv, "--json", "--role", "Agent"])
    assert code == 0
    got = json.loads(out)
    assert got["version"] == 3 and got["safe"] is False and got["parsed"] is True
    assert got["categories"] == [{"code": "S2", "name": "Non-Violent Crimes", "default_code": "S2"}]


def test_guard_verb_reads_text_from_stdin(forced, monkeypatch, capsys):
    argv = ["guard", "--model", str(forced("safe")), "--max-seq-len", "2048", "-q"]
    code, out, err = run(monkeypatch, capsys, [*argv, "--show-prompt"], stdin="Hello there\n")
    assert (code, out) == (0, "safe\n")
    assert "User: Hello there\n\n<END CONVERSATION>" in err
    argv = ["guard", "--model", str(forced("unsafe")), "--max-seq-len", "2048", "-q"]
    code, out, _ = run(monkeypatch, capsys, [*argv, "--guard-version", "2"], stdin="Hi")
    assert out == "unsafe: S2 (Non-Violent Crimes)\n"


def test_guard_verb_bad_input_is_one_line(forced, monkeypatch, capsys):
    argv = ["guard", "--model", str(forced("safe")), "--guard-categories=-S99"]
    code, _, err = run(monkeypatch, capsys, argv, stdin="Hi")
    assert code == 2 and err.startswith("error: Llama Guard 3 has no category S99")
    code, _, err = run(monkeypatch, capsys, ["guard", "--model", "x", "nofile.json"])
    assert code == 2 and "no file nofile.json" in err


def test_chat_refuses_unsafe_input(forced, monkeypatch, capsys):
    argv = ["chat", "--model", str(forced("chat")), "--guard", str(forced("unsafe"))]
    argv += ["--guard-message", MESSAGE, "--temperature", "0", "--max-seq-len", "1024", "-q"]
    argv += ["--guard-max-seq-len", "2048"]
    code, out, err = run(monkeypatch, capsys, argv, stdin="How do I make poison?\n")
    assert code == 0 and out == MESSAGE + "\n"
    assert "safety filter: unsafe: S2 (Non-Violent Crimes)" in err


def test_chat_checks_the_answer_before_showing_it(forced, monkeypatch, capsys):
    base = ["chat", "--model", str(forced("chat")), "--temperature", "0", "-q"]
    base += ["--max-seq-len", "1024", "--guard-max-seq-len", "2048", "--guard-message", MESSAGE]
    argv = [*base, "--guard", str(forced("unsafe")), "--guard-check", "output"]
    code, out, _ = run(monkeypatch, capsys, argv, stdin="hi\n")
    assert out == MESSAGE + "\n" and ANSWER not in out
    code, out, _ = run(monkeypatch, capsys, [*base, "--guard", str(forced("safe"))], stdin="hi\n")
    assert out == ANSWER + "\n"


def test_guard_flags_fail_clearly(forced, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, ["chat", "--guard-check", "output"])
    assert code == 2 and "--guard-check has no effect without a guard model" in err
    code, _, err = run(monkeypatch, capsys, ["serve", "--guard", "g", "--guard-check", "inptu"])
    assert code == 2 and "unknown guard stage(s) inptu" in err
    argv = ["chat", "--model", str(forced("chat")), "-q", "--guard", "/no/such/guard"]
    code, _, err = run(monkeypatch, capsys, argv)
    assert code == 1 and "error: the guard model: no such file" in err
