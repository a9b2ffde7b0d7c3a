"""`llama3 download` against real HTTP servers on 127.0.0.1 that the tests start.

The Meta tests serve a model layout written here (random bytes with a correct checklist.chk) behind
a CloudFront-style signed query string; the CLI runs in a subprocess as a user runs it, and the
server's transfer log is the oracle for what went over the wire. The hub tests point `HF_ENDPOINT` at
a loopback server that speaks enough of the hub API for `snapshot_download`.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama3.cli import main
from llama3.download import (
    ChecksumError,
    DownloadError,
    DownloadUsageError,
    LinkExpiredError,
    meta,
)
from llama3.utils.progress import Progress, format_bytes, format_duration

from .download_server import POLICY, SIGNATURE, FakeHub, FakeMetaCDN, write_meta_layout

MODEL_8B = {
    "params.json": b'{"dim": 4096, "n_layers": 32}',
    "tokenizer.model": os.urandom(5000),
    "consolidated.00.pth": os.urandom(3 * 1024 * 1024 + 123),
}
SHARDS_70B = {f"consolidated.{i:02d}.pth": os.urandom(4096 + i) for i in range(8)}
SHARDS_70B["params.json"] = b'{"dim": 8192}'
SHARDS_70B["tokenizer.model"] = MODEL_8B["tokenizer.model"]


def run(
    *args: str, stdin: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama3", "download", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or _env(),
    )


def run_parallel(
    *commands: tuple[str, ...], envs: list[dict] | None = None
) -> list[subprocess.CompletedProcess]:
    """Several `llama3 download` commands at once (each pays the interpreter start-up)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "llama3", "download", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=envs[i] if envs else _env(),
        )
        for i, args in enumerate(commands)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def assert_no_secret(*outputs: str) -> None:
    for out in outputs:
        assert SIGNATURE not in out and POLICY not in out and "Signature=" not in out


@pytest.fixture
def cdn(tmp_path):
    root = tmp_path / "cdn"
    (root).mkdir()
    (root / "LICENSE").write_text("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n")
    (root / "USE_POLICY").write_text("Meta Llama 3 Acceptable Use Policy\n")
    write_meta_layout(root, "8b_instruction_tuned", MODEL_8B)
    write_meta_layout(root, "70b_pre_trained", SHARDS_70B)
    server = FakeMetaCDN(root)
    base = server.start()
    server.base = base
    server.signed = server.url(base)
    yield server
    server.stop()


def assert_model(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert (folder / "checklist.chk").is_file()
    assert not list(folder.glob("*.part"))


# --- Meta's signed URL, through the real command --------------------------------------------------


def test_full_download_two_models(cdn, tmp_path):
    out = tmp_path / "models"
    r = run("--url", cdn.signed, "--models", "8B-instruct,70B", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        str(out / "Meta-Llama-3-8B-Instruct"),
        str(out / "Meta-Llama-3-70B"),
    ]
    assert_model(out / "Meta-Llama-3-8B-Instruct", MODEL_8B)
    assert_model(out / "Meta-Llama-3-70B", SHARDS_70B)
    assert (out / "LICENSE").read_text().startswith("META LLAMA 3")
    assert (out / "USE_POLICY").is_file()
    # stderr is not a terminal: no redraws, one summary line per file
    assert "\r" not in r.stderr
    assert "consolidated.00.pth  3.0 MiB in" in r.stderr
    assert "Meta-Llama-3-70B: 10 files match checklist.chk" in r.stderr
    assert_no_secret(r.stdout, r.stderr)
    # every file went over the wire exactly once, whole
    assert cdn.sent("8b_instruction_tuned/consolidated.00.pth") == len(
        MODEL_8B["consolidated.00.pth"]
    )
    assert {t.status for t in cdn.log} == {200}

    # run again: nothing is transferred, everything is re-checked
    before = len(cdn.log)
    r = run("--url", cdn.signed, "--models", "8b-Instruct", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(cdn.log) == before
    assert "consolidated.00.pth: already downloaded" in r.stderr


def test_interactive_prompts(cdn, tmp_path):
    # --out defaults to the current folder, like download.sh's TARGET_FOLDER="."
    r = subprocess.run(
        [sys.executable, "-m", "llama3", "download"],
        input=f"{cdn.signed}\n8B-Instruct\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(meta.URL_PROMPT + meta.MODELS_PROMPT)
    assert_model(tmp_path / "Meta-Llama-3-8B-Instruct", MODEL_8B)
    assert (tmp_path / "LICENSE").is_file()
    assert r.stdout.strip() == "Meta-Llama-3-8B-Instruct"
    assert_no_secret(r.stdout, r.stderr)


def test_resume_partial_file_quietly(cdn, tmp_path):
    out = tmp_path / "m"
    folder = out / "Meta-Llama-3-8B-Instruct"
    folder.mkdir(parents=True)
    whole = MODEL_8B["consolidated.00.pth"]
    have = 1_000_003
    (folder / "consolidated.00.pth.part").write_bytes(whole[:have])
    (folder / "params.json").write_bytes(MODEL_8B["params.json"])  # complete: never fetched again
    r = run("--url", cdn.signed, "--models", "8B-instruct", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == f"{folder}\n"  # --quiet: no bars, no status lines
    assert_model(folder, MODEL_8B)
    shard = [t for t in cdn.log if t.path == "8b_instruction_tuned/consolidated.00.pth"]
    assert [(t.status, t.start, t.sent) for t in shard] == [(206, have, len(whole) - have)]
    assert cdn.sent("8b_instruction_tuned/params.json") == 0


def test_ctrl_c_keeps_the_part_file_and_the_next_run_resumes(cdn, tmp_path):
    path = "8b_instruction_tuned/consolidated.00.pth"
    cdn.stall_after[path] = 1_500_000  # then the connection hangs, as a dead link does
    out = tmp_path / "m"
    part = out / "Meta-Llama-3-8B-Instruct" / "consolidated.00.pth.part"
    args = ["--url", cdn.signed, "--models", "8B-instruct", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama3", "download", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size == 1_500_000):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.endswith(
        "\ninterrupted: run the same command again to resume (finished files are kept)\n"
    )
    assert "Traceback" not in err and out_text == ""
    assert part.stat().st_size == 1_500_000

    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert_model(out / "Meta-Llama-3-8B-Instruct", MODEL_8B)
    resumed = [t for t in cdn.log if t.path == path][-1]
    assert (resumed.status, resumed.start) == (206, 1_500_000)
    assert resumed.sent == len(MODEL_8B["consolidated.00.pth"]) - 1_500_000


def test_corrupted_file_403_and_404(cdn, tmp_path):
    """Three failing downloads, run side by side: a corrupted shard, a bad link, a missing model."""
    bad = cdn.root / "8b_instruction_tuned" / "consolidated.00.pth"
    data = bytearray(bad.read_bytes())
    data[12345] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "m"
    # CloudFront answers 403 to an expired or altered signature alike
    forged = cdn.signed.replace(SIGNATURE, SIGNATURE[::-1])
    corrupt, expired, missing = run_parallel(
        ("--url", cdn.signed, "--models", "8B-instruct", "--out", str(out)),
        ("--url", forged, "--models", "8B-instruct", "--out", str(tmp_path / "x")),
        ("--url", cdn.signed, "--models", "70B-instruct", "--out", str(tmp_path / "y")),
    )
    want = hashlib.md5(MODEL_8B["consolidated.00.pth"]).hexdigest()
    got = hashlib.md5(bytes(data)).hexdigest()
    assert corrupt.returncode == 1
    assert corrupt.stderr.strip().splitlines()[-1] == (
        f"error: checksum mismatch for Meta-Llama-3-8B-Instruct/consolidated.00.pth: md5 {got}, "
        f"but checklist.chk says {want}; the bad file was deleted (hint: run the same command "
        "again to download it afresh; if it fails again, request a new link at "
        "https://www.llama.com/llama-downloads/)"
    )
    assert not (out / "Meta-Llama-3-8B-Instruct" / "consolidated.00.pth").exists()

    assert expired.returncode == 1
    assert expired.stderr.strip().splitlines()[-1] == (
        f"error: the server refused {cdn.base}/LICENSE (HTTP 403 Forbidden): the download link "
        "has expired (Meta's links expire 24 hours after they are sent and allow a limited "
        "number of downloads) or it was not pasted in full (hint: request a new link at "
        "https://www.llama.com/llama-downloads/ and run the command again with it; finished "
        "files are kept and partial files resume)"
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: not found on the server: {cdn.base}/70b_instruction_tuned/checklist.chk "
        "(HTTP 404) (hint: check --models: a link only serves the models (and Llama version) it "
        "was sent for)"
    )
    for r in (corrupt, expired, missing):
        assert "Traceback" not in r.stderr
        assert_no_secret(r.stdout, r.stderr)
        assert SIGNATURE[::-1] not in r.stderr


def test_expired_link_flag(cdn, tmp_path):
    cdn.expired = True
    with pytest.raises(LinkExpiredError, match=r"refused .*/8b_pre_trained/params.json \(HTTP 403"):
        meta.fetch(meta.SignedURL(cdn.signed), "8b_pre_trained/params.json", tmp_path / "p")


# --- usage errors (exit code 2), through the same entry point in-process --------------------------


def _main(capsys, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(["download", *argv])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def test_usage_errors(capsys, tmp_path):
    url = "https://download6.llamameta.net/*?Policy=p&Signature=" + SIGNATURE
    code, _, err = _main(capsys, "--url", url, "--models", "8B,13B", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: unknown model name '13B' (hint: Llama 3 links: 8B,")
    assert "Llama3.1-8B-Instruct" in err and not list(tmp_path.iterdir())

    no_star = "https://download6.llamameta.net/file?Policy=p&Signature=" + SIGNATURE
    code, _, err = _main(capsys, "--url", no_star, "--models", "8B")
    assert code == 2 and err == (
        "error: the download URL for download6.llamameta.net has no '*' where the file path goes "
        "(hint: paste the whole URL from Meta's email, unchanged (it contains a '*'))\n"
    )
    code, _, err = _main(capsys, "--url", "ftp://x/*", "--models", "8B")
    assert code == 2 and err.startswith("error: the download URL must start with https://")

    code, _, err = _main(capsys)  # stdin at its end: no URL
    assert code == 2 and err == (
        f"{meta.URL_PROMPT}error: no answer to 'Enter the URL from email' (end of input) "
        "(hint: answer the question or pass --url)\n"
    )
    code, _, err = _main(capsys, "--url", url)
    assert code == 2 and "no answer to 'Enter the list of models" in err and "--models" in err

    code, _, err = _main(capsys, "meta-llama/Llama-3.2-1B", "--url", url)
    assert code == 2 and err.startswith("error: a repo id and --url/--models cannot be combined")
    code, _, err = _main(capsys, "--original", "--url", url, "--models", "8B")
    assert code == 2 and err.startswith("error: --original and --revision apply to Hugging Face")
    a_file = tmp_path / "file"
    a_file.write_text("")
    cdn_url = "http://127.0.0.1:9/*?Signature=" + SIGNATURE
    code, _, err = _main(capsys, "--url", cdn_url, "--models", "8B", "--out", str(a_file), "-q")
    assert code == 1 and err == (
        f"error: cannot create the folder {a_file}: File exists (hint: choose another --out)\n"
    )
    code, _, err = _main(capsys, "not a repo")
    assert code == 2 and err.startswith("error: not a Hugging Face repo id: 'not a repo'")
    assert_no_secret(err)


# --- the fetch and checklist logic, in-process against the same server ----------------------------


def test_dropped_connection_resumes_on_retry(cdn, tmp_path):
    path = "8b_instruction_tuned/consolidated.00.pth"
    cdn.drop_after[path] = 777_777
    dest = tmp_path / "consolidated.00.pth"
    url = meta.SignedURL(cdn.signed)
    sent = meta.fetch(url, path, dest, quiet=True, backoff=0)
    assert dest.read_bytes() == MODEL_8B["consolidated.00.pth"]
    assert [(t.status, t.start) for t in cdn.log] == [(200, 0), (206, 777_777)]
    assert sent == len(MODEL_8B["consolidated.00.pth"]) == cdn.sent(path)


def test_server_ignoring_range_restarts_whole(cdn, tmp_path):
    cdn.ignore_range = True
    path = "8b_instruction_tuned/tokenizer.model"
    dest = tmp_path / "tokenizer.model"
    (tmp_path / "tokenizer.model.part").write_bytes(b"stale bytes from elsewhere")
    meta.fetch(meta.SignedURL(cdn.signed), path, dest, quiet=True)
    assert dest.read_bytes() == MODEL_8B["tokenizer.model"]
    assert not (tmp_path / "tokenizer.model.part").exists()


def test_complete_part_file_is_kept_without_transfer(cdn, tmp_path):
    path = "8b_instruction_tuned/params.json"
    (tmp_path / "params.json.part").write_bytes(MODEL_8B["params.json"])
    sent = meta.fetch(meta.SignedURL(cdn.signed), path, tmp_path / "params.json", quiet=True)
    assert sent == 0 and [t.status for t in cdn.log] == [416]
    assert (tmp_path / "params.json").read_bytes() == MODEL_8B["params.json"]


def test_unreachable_server_after_retries(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = meta.SignedURL(f"http://127.0.0.1:{port}/*?Signature={SIGNATURE}")
    with pytest.raises(DownloadError) as e:
        meta.fetch(url, "8b_pre_trained/params.json", tmp_path / "p", quiet=True, backoff=0)
    assert str(e.value) == (
        f"download of http://127.0.0.1:{port}/8b_pre_trained/params.json failed: cannot connect to "
        f"127.0.0.1:{port} (Connection refused) (hint: check the network connection and run the "
        "same command again: finished files are kept and the partial file resumes)"
    )


def test_server_error_is_retried_then_reported(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Broken(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_error(503)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = meta.SignedURL(f"http://127.0.0.1:{srv.server_address[1]}/*?Signature={SIGNATURE}")
        with pytest.raises(DownloadError, match=r"failed: HTTP 503 Service Unavailable \(hint"):
            meta.fetch(url, "LICENSE", tmp_path / "LICENSE", quiet=True, retries=2, backoff=0)
        assert len(hits) == 3
    finally:
        srv.shutdown()
        srv.server_close()


def test_checklist_parsing(tmp_path):
    chk = tmp_path / "checklist.chk"
    chk.write_text(
        "0123456789abcdef0123456789ABCDEF  consolidated.00.pth\n\n"
        "fedcba9876543210fedcba9876543210 *params.json\n"
    )
    assert meta.read_checklist(chk) == {
        "consolidated.00.pth": "0123456789abcdef0123456789abcdef",
        "params.json": "fedcba9876543210fedcba9876543210",
    }
    chk.write_text("0123456789abcdef0123456789abcdef  ../../etc/passwd\n")
    with pytest.raises(ChecksumError, match=r"checklist.chk line 1 is not '<md5>  <file name>'"):
        meta.read_checklist(chk)


def test_checklist_extra_files_are_fetched(cdn, tmp_path):
    # a file that only checklist.chk names (as fp8 scales are in some Meta layouts) is fetched too
    extra = write_meta_layout(
        cdn.root, "8b_pre_trained", {**MODEL_8B, "fp8_scales_0.pt": b"scales"}
    )
    assert "fp8_scales_0.pt" in extra
    (model,) = meta.parse_models("8b")
    meta.download_model(meta.SignedURL(cdn.signed), model, tmp_path, quiet=True)
    assert (tmp_path / "Meta-Llama-3-8B" / "fp8_scales_0.pt").read_bytes() == b"scales"


def test_model_names():
    names = [m.folder for m in meta.parse_models("8b, 8B-Instruct,70b-Instruct,8B")]
    assert names == ["Meta-Llama-3-8B", "Meta-Llama-3-8B-Instruct", "Meta-Llama-3-70B-Instruct"]
    assert [m.name for m in meta.parse_models("")] == list(meta.DEFAULT_MODELS)
    (m,) = meta.parse_models("Llama3.2-1B-Instruct")
    assert m.remote == m.folder == "Llama-3.2-1B-Instruct" and m.files[-1] == "consolidated.00.pth"
    (m,) = meta.parse_models("70b_instruction_tuned")
    assert m.files.count("params.json") == 1 and m.files[-1] == "consolidated.07.pth"
    with pytest.raises(DownloadUsageError):
        meta.parse_models("Llama3.1-13B")


def test_signed_url_never_shows_its_query():
    url = meta.SignedURL(f" 'https://dl.example.net/*?Policy={POLICY}&Signature={SIGNATURE}'\n")
    assert url.for_path("8b_pre_trained/params.json") == (
        f"https://dl.example.net/8b_pre_trained/params.json?Policy={POLICY}&Signature={SIGNATURE}"
    )
    assert url.public("LICENSE") == "https://dl.example.net/LICENSE"
    assert_no_secret(str(url), repr(url))


# --- progress bars ----------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_in_place():
    term = FakeTerminal()
    with Progress(4 * 1024**2, "consolidated.00.pth", stream=term) as p:
        p.min_interval = 0
        p.update(1024**2)
        p.update(1024**2)
        assert "ETA " in term.getvalue().split("\r")[-1]
        p.update(2 * 1024**2)
    frames = term.getvalue().split("\r")[1:]
    assert len(frames) == 5 and term.getvalue().endswith("\n")
    assert "consolidated.00.pth [" in frames[2] and " 50% 2.0 MiB/4.0 MiB " in frames[2]
    assert "100% 4.0 MiB/4.0 MiB" in frames[-1] and "#" * 10 in frames[-1]


def test_progress_render_fits_the_width():
    p = Progress(10**9, "a-rather-long-file-name.pth", enabled=False)
    p.n = 2 * 10**8
    for width in (20, 40, 79, 200):
        line = p.render(width)
        assert len(line) <= width and "%" in line
    assert "[" in p.render(120)
    unknown = Progress(None, "stream", enabled=False)
    unknown.n = 1536
    assert unknown.render(80).startswith("stream 1.5 KiB ")


def test_progress_off_a_terminal_writes_one_final_line():
    log = io.StringIO()
    with Progress(2048, "params.json", stream=log, initial=1024) as p:
        p.update(1024)
        assert log.getvalue() == ""
    assert log.getvalue().startswith("params.json  1.0 KiB in 0:00 (")
    assert log.getvalue().endswith(", 1.0 KiB already there)\n") and log.getvalue().count("\n") == 1

    failed = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(10, "x", stream=failed):
        raise KeyboardInterrupt
    assert failed.getvalue() == ""  # the error says what happened

    quiet = FakeTerminal()
    with Progress(10, "x", enabled=False, stream=quiet) as p:
        p.update(10)
    assert quiet.getvalue() == ""


def test_formatting():
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "3.0 GiB",
    ]
    assert [format_duration(s) for s in (5, 75, 3725)] == ["0:05", "1:15", "1:02:05"]


# --- Hugging Face hub ---------------------------------------------------------------------------------

REPO = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(70_000),
    "original/params.json": b'{"dim": 64}',
    "original/consolidated.00.pth": os.urandom(9_000),
}


@pytest.fixture
def hub(tmp_path):
    server = FakeHub({"meta-llama/Tiny-Llama-3": REPO}, gated=("meta-llama/Gated",))
    base = server.start()
    env = _env(HF_ENDPOINT=base, HF_HOME=str(tmp_path / "hf-home"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(var, None)
    server.env, server.base = env, base
    yield server
    server.stop()


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }


def test_hub_download_to_cache_and_original(hub, tmp_path):
    r = run("meta-llama/Tiny-Llama-3", "--quiet", env=hub.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    snapshot = Path(r.stdout.strip())
    assert snapshot.is_relative_to(tmp_path / "hf-home" / "hub")
    assert _files(snapshot) == {k: v for k, v in REPO.items() if not k.startswith("original/")}

    out = tmp_path / "orig"
    r = run(
        "https://huggingface.co/meta-llama/Tiny-Llama-3",
        "--original",
        "--out",
        str(out),
        env=hub.env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "original")
    assert r.stderr.endswith(f"done: try `llama3 inspect {out / 'original'}`\n")
    assert _files(out) == {k: v for k, v in REPO.items() if k.startswith("original/")}


def test_hub_errors(hub, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: the hub is unreachable
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    gated, missing, offline, unreachable = run_parallel(
        ("meta-llama/Gated",),
        ("meta-llama/Nope",),
        ("meta-llama/Tiny-Llama-3",),
        ("meta-llama/Tiny-Llama-3", "--out", str(tmp_path / "x")),
        envs=[hub.env, hub.env, dict(hub.env, HF_HUB_OFFLINE="1"), dict(hub.env, HF_ENDPOINT=dead)],
    )
    assert gated.returncode == 1 and gated.stderr == (
        "error: meta-llama/Gated is a gated repo and no token is set (hint: accept the licence at "
        f"{hub.base}/meta-llama/Gated, then log in with `hf auth login` or set HF_TOKEN)\n"
    )
    assert missing.returncode == 1 and missing.stderr == (
        f"error: repo not found on {hub.base}: meta-llama/Nope (hint: check the spelling "
        "(owner/name); if it is private or gated, log in with `hf auth login` or set HF_TOKEN)\n"
    )
    assert offline.returncode == 1 and offline.stderr == (
        "error: HF_HUB_OFFLINE is set, so the hub is not contacted, and meta-llama/Tiny-Llama-3 "
        "is not in the local cache (hint: unset HF_HUB_OFFLINE to download)\n"
    )
    assert unreachable.returncode == 1 and unreachable.stderr == (
        f"error: cannot reach the Hugging Face hub at {dead} to download "
        "meta-llama/Tiny-Llama-3 (hint: check the network connection (and HF_ENDPOINT or proxy "
        "settings); files already downloaded are kept)\n"
    )
