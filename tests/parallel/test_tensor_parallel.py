"""Tensor parallelism with real torch.distributed (gloo) processes on the tiny random models.

Oracles: the same checkpoint in one process (this project's single-process model, itself held
to transformers' logits elsewhere). Each run is a real `torchrun` job (or processes this test
starts with torchrun's environment) of `tp_worker.py` or the `llama3` CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from llama3.config import ModelArgs
from llama3.engine.engine import LLMEngine
from llama3.errors import ConfigError
from llama3.generation.generate import generate
from llama3.generation.params import SamplingParams
from llama3.loader import load
from llama3.parallel.plan import ShardPlan

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from tp_worker import PROMPTS  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("LLAMA3_API_KEY", None)
    return env


def _run_workers(world: int, cases: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*TORCHRUN, "--nproc-per-node", str(world), str(HERE / "tp_worker.py"), str(out)]
    proc = subprocess.run(
        [*cmd, json.dumps(cases)], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _single(path: Path, quantize: str | None = None) -> dict:
    lm = load(path, quantize=quantize or "none")  # the ranks run float unless asked
    with torch.inference_mode():
        logits = lm.model(torch.tensor([PROMPTS[0]]))
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=8, seed=7)
    engine = LLMEngine(lm.model, lm.tokenizer).generate(PROMPTS, [greedy, seeded])
    return {
        "logprobs": torch.log_softmax(logits[0].double(), -1),
        "greedy": generate(lm.model, lm.tokenizer, PROMPTS, greedy, max_seq_len=64)[0].tokens,
        "seeded": generate(lm.model, lm.tokenizer, PROMPTS[:1], seeded, max_seq_len=64)[0].tokens,
        "engine": [r.tokens for r in engine],
        "params": sum(p.numel() for p in lm.model.parameters()),
    }


def _check(out: Path, name: str, world: int, ref: dict, tol: float = 1e-5) -> None:
    ranks = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(world)]
    r0 = ranks[0]
    diff = (torch.tensor(r0["logprobs"], dtype=torch.float64) - ref["logprobs"]).abs().max()
    assert diff <= tol, f"{name}: logprobs differ by {diff}"
    assert r0["lockstep_greedy"] == ref["greedy"], name
    assert r0["lockstep_seeded"] == ref["seeded"], name
    assert r0["engine"] == ref["engine"], name
    for r in ranks[1:]:  # every rank saw the same tokens, unseeded sampling included
        for key in ("lockstep_greedy", "lockstep_unseeded", "lockstep_seeded"):
            assert r[key] == r0[key], (name, key)
    # each rank holds about 1/world of the weights (norms are replicated)
    for r in ranks:
        assert r["local_params"] < ref["params"] / world * 1.02, (name, r["local_params"])


def test_two_ranks_every_format(tiny, tmp_path):
    """3.0 / 3.1 scaled RoPE / 3.2 tied embeddings; Meta shards read as they are (2 on 2) and
    re-sliced (1 on 2); HF and GGUF sliced from their files; int8 weights per shard."""
    cases = {
        "meta2-30": (tiny.path("3.0", "meta2"), None),
        "meta1-31": (tiny.path("3.1", "meta"), None),
        "hf-32": (tiny.path("3.2", "hf"), None),
        "gguf-31": (tiny.path("3.1", "gguf"), None),
        "gguf-q8-30": (tiny.path("3.0", "gguf-q8"), None),
        "hf-30-int8": (tiny.path("3.0", "hf"), "int8"),
    }
    spec = [{"name": n, "path": str(p), "quantize": q} for n, (p, q) in cases.items()]
    _run_workers(2, spec, tmp_path)
    for name, (path, q) in cases.items():
        if q is None:
            _check(tmp_path, name, 2, _single(path))
        else:
            _check_quantized(tmp_path, name, 2, _single(path), _single(path, q))


def _check_quantized(out: Path, name: str, world: int, floats: dict, single: dict) -> None:
    """Each rank quantizes its own rows and columns (a row's scale covers the rank's columns of
    it), so the logits are not the single-process int8 model's: their error against the float
    model must be of the same size. Every rank agrees; the engine equals the generator."""
    ranks = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(world)]
    r0 = ranks[0]
    err = (torch.tensor(r0["logprobs"], dtype=torch.float64) - floats["logprobs"]).abs().max()
    err_single = (single["logprobs"] - floats["logprobs"]).abs().max()
    assert 0 < err <= 2 * err_single, (name, err, err_single)
    assert r0["engine"][0] == r0["lockstep_greedy"], name
    for r in ranks[1:]:
        for key in ("lockstep_greedy", "lockstep_unseeded", "lockstep_seeded"):
            assert r[key] == r0[key], (name, key)


def _odd_model(root: Path) -> Path:
    """6 heads and 3 kv heads: splits over 3 ranks (and 2 ranks do not divide the kv heads)."""
    import factory
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=factory.VOCAB,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=[128001, 128009],
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    return factory.write_hf(m, root / "odd-hf", "3.0")


def test_three_ranks_and_kv_heads_repeated(tiny, tmp_path):
    """3 ranks over 6 heads; 4 ranks over 2 kv heads (each kv head on two ranks, Meta's rule)."""
    odd = _odd_model(tmp_path)
    _run_workers(3, [{"name": "odd", "path": str(odd)}], tmp_path / "w3")
    _check(tmp_path / "w3", "odd", 3, _single(odd))
    four = tiny.path("3.1", "hf")
    _run_workers(4, [{"name": "kvrep", "path": str(four)}], tmp_path / "w4")
    _check(tmp_path / "w4", "kvrep", 4, _single(four))


def test_shard_plan_rules():
    args = ModelArgs(dim=64, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=100)
    # 4 ranks over 2 kv heads: ranks 0,1 hold kv head 0, ranks 2,3 kv head 1
    plans = [ShardPlan.make(args, r, 4) for r in range(4)]
    assert [p.kv_head_start for p in plans] == [0, 0, 1, 1]
    assert [p.cut("layers.0.attention.wk.weight") for p in plans] == [
        (0, 0, 8),
        (0, 0, 8),
        (0, 8, 16),
        (0, 8, 16),
    ]
    assert plans[1].cut("layers.0.attention.wo.weight") == (-1, 16, 32)
    assert plans[0].cut("layers.0.attention_norm.weight") is None
    # vocab 100 over 3 ranks: 34 + 34 + 32 rows, nothing lost or doubled
    three = ModelArgs(
        dim=48, n_layers=1, n_heads=6, n_kv_heads=3, vocab_size=100, ffn_hidden_dim=96
    )
    ranges = [ShardPlan.make(three, r, 3).vocab_range() for r in range(3)]
    assert ranges == [(0, 34), (34, 68), (68, 100)]
    with pytest.raises(ConfigError, match="3 tensor-parallel ranks do not divide the model's 8"):
        ShardPlan.make(args, 0, 3)
    with pytest.raises(ConfigError, match="2 tensor-parallel ranks and the model's 3 kv heads"):
        ShardPlan.make(three, 0, 2)


# ---- the CLI under torchrun --------------------------------------------------------------------
def test_cli_generate_and_chat_under_torchrun(tiny):
    path = str(tiny.path("3.0", "meta2"))
    gen = ["generate", "The capital of France is", "--model", path]
    gen += ["--temperature", "0", "--max-tokens", "12", "--quiet"]
    one = subprocess.run(
        [sys.executable, "-m", "llama3", *gen], capture_output=True, text=True, env=_env()
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [*TORCHRUN, "--nproc-per-node", "2", "-m", "llama3", *gen],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout == one.stdout  # and printed once: only rank 0 answers
    chat = ["chat", "--model", path, "--temperature", "0", "--max-tokens", "10", "--quiet"]
    lines = "Hello\nWhat is a llama?\n"
    one = subprocess.run(
        [sys.executable, "-m", "llama3", *chat],
        input=lines,
        capture_output=True,
        text=True,
        env=_env(),
    )
    two = subprocess.run(
        [*TORCHRUN, "--nproc-per-node", "2", "-m", "llama3", *chat],
        input=lines,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert two.stdout == one.stdout and one.stdout.strip()


def test_openai_server_under_torchrun(tiny):
    """`torchrun -m llama3 serve`: rank 0 serves and schedules, the other rank follows; the
    official openai client gets the single-process model's greedy answer."""
    import openai
    from serve.server import ServerProcess

    from llama3 import Llama

    path = tiny.path("3.1", "hf")

    class TorchrunServer(ServerProcess):
        def command(self) -> list[str]:
            cmd = super().command()
            return [*TORCHRUN, "--nproc-per-node", "2", "-m", *cmd[2:]]

    messages = [{"role": "user", "content": "Say something."}]
    want = (
        Llama.load(path, max_seq_len=256)
        .chat([messages], SamplingParams(temperature=0.0, max_tokens=10))[0]
        .text
    )
    srv = TorchrunServer(model=path, max_model_len=256).start(timeout=240)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        outs = [
            client.chat.completions.create(
                model=client.models.list().data[0].id,
                messages=messages,
                temperature=0,
                max_tokens=10,
            )
            for _ in range(2)
        ]
        assert [o.choices[0].message.content for o in outs] == [want, want]
    finally:
        code = srv.stop()
    # torchrun answers SIGTERM by stopping its ranks and exiting 1 with its own SignalException;
    # what matters is that every rank ended on the signal (no kill needed) without an error of ours
    assert code is not None and code != -signal.SIGKILL, srv.log
    assert "error:" not in srv.log, srv.log


# ---- failures end every rank -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """The CLI as `world` ranks, started with torchrun's environment but without torchrun (which
    would itself stop the others when one fails: here the ranks must notice on their own)."""
    port = _free_port()
    procs = []
    for r in range(world):
        env = _env()
        env.update(
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            LLAMA3_TP_TIMEOUT="30",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llama3", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    return procs


def _wait_loaded(p: subprocess.Popen, marker: str) -> None:
    """Read p's stdout (in a thread: a pipe read blocks) until `marker` shows up."""
    assert p.stdout is not None
    seen = threading.Event()

    def pump() -> None:
        buf = ""
        while (ch := p.stdout.read(1)) != "":
            buf += ch
            if marker in buf:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    assert seen.wait(120), p.stderr.read() if p.poll() is not None and p.stderr else "no answer"


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_the_others(tiny, victim):
    """SIGKILL one rank of a chat between two turns: the survivor ends within seconds with one
    error line naming the failure (never a hang, never a traceback)."""
    path = str(tiny.path("3.0", "meta2"))
    procs = _spawn_ranks(["chat", "--model", path, "--temperature", "0", "--max-tokens", "4"])
    try:
        procs[0].stdin.write("Hello\n")
        procs[0].stdin.flush()
        # the pipe-mode chat prints its answer, then waits for the next line (ranks > 0 follow)
        _wait_loaded(procs[0], "\n")
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        survivor = procs[1 - victim]
        t0 = time.monotonic()
        if victim == 1:
            survivor.stdin.write("Another question\n")  # the next call finds its peer gone
            survivor.stdin.flush()
        code = survivor.wait(60)
        took = time.monotonic() - t0
        err = survivor.stderr.read()
        assert code == 1, err
        assert "error: tensor-parallel rank" in err and "Traceback" not in err, err
        assert took < 45, took
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
