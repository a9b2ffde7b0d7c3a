"""A request that fails inside an engine step fails alone: its error reaches its caller (a 400
through the server, an error event in a stream), and every other request of the same batch
finishes with exactly the tokens it gets when run alone. Failures are injected (a wrapped sampler
state or runner), the engine, server and client are real."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import openai
import pytest

from llama3 import Llama, SamplingParams
from llama3.engine.config import EngineConfig
from llama3.engine.engine import LLMEngine
from llama3.errors import RequestFailedError
from llama3.generation.sequence_state import SequenceState

BAD_SEED = 13  # the injected failures hit requests with this seed only
CFG = EngineConfig(
    max_num_seqs=8, max_num_batched_tokens=64, block_size=16, num_blocks=64, max_model_len=256
)


@pytest.fixture(scope="module")
def llm(tiny):
    return Llama.load(tiny.path("3.1", "meta"), max_seq_len=256, max_batch_size=1)


@pytest.fixture
def failing_accept(monkeypatch):
    """Requests seeded BAD_SEED raise in `accept` on their third token."""
    real = SequenceState.accept

    def accept(self, tok, logits):
        if self.params.seed == BAD_SEED and len(self.generated) == 2:
            raise ValueError("injected sampler failure")
        return real(self, tok, logits)

    monkeypatch.setattr(SequenceState, "accept", accept)


def _good(n: int) -> list[SamplingParams]:
    return [SamplingParams(temperature=0, max_tokens=8 + i, ignore_eos=True) for i in range(n)]


def _run(engine: LLMEngine, prompts, params) -> tuple[dict[str, list[int]], dict[str, Exception]]:
    """Tokens per request id (r0, r1, ...) and the failures, stepping until all are done."""
    ids = [engine.add_request(p, sp, f"r{i}") for i, (p, sp) in enumerate(zip(prompts, params))]
    got: dict[str, list[int]] = {rid: [] for rid in ids}
    failed: dict[str, Exception] = {}
    while engine.has_unfinished():
        for o in engine.step():
            got[o.request_id].append(o.event.token)
        failed.update(engine.take_failures())
    return {rid: got[rid] for rid in ids}, failed


def _prompts(llm, n: int) -> list[list[int]]:
    return [llm.tokenizer.encode_prompt(f"Prompt number {i} of the batch") for i in range(n)]


def test_a_sampling_failure_fails_only_its_request(llm, failing_accept):
    engine = LLMEngine(llm.model, llm.tokenizer, CFG)
    prompts = _prompts(llm, 4)
    params = _good(4)
    params[1] = SamplingParams(temperature=0.8, seed=BAD_SEED, max_tokens=20, ignore_eos=True)
    got, failed = _run(engine, prompts, params)
    ids = list(got)
    assert list(failed) == [ids[1]]
    assert isinstance(failed[ids[1]], RequestFailedError)
    assert "injected sampler failure" in failed[ids[1]].message
    assert len(got[ids[1]]) == 2  # the tokens before the failure went out; nothing after
    for i in (0, 2, 3):
        assert got[ids[i]] == llm.complete([prompts[i]], params[i])[0].tokens
    assert engine.block_manager.num_free_blocks == CFG.num_blocks


def test_a_forward_failure_is_traced_to_its_request(llm):
    engine = LLMEngine(llm.model, llm.tokenizer, CFG)
    prompts = _prompts(llm, 3)
    params = _good(3)
    real = engine.runner.run

    def run(out):  # the forward raises whenever the bad request's rows are in it
        if any(s.seq.seq_id == "r2" for s in out.scheduled):
            raise RuntimeError("injected forward failure")
        return real(out)

    engine.runner.run = run
    got, failed = _run(engine, prompts, params)
    ids = list(got)
    assert list(failed) == [ids[2]] and got[ids[2]] == []
    assert "injected forward failure" in failed[ids[2]].message
    for i in (0, 1):
        assert got[ids[i]] == llm.complete([prompts[i]], params[i])[0].tokens
    assert engine.block_manager.num_free_blocks == CFG.num_blocks


def test_a_forward_failure_of_the_whole_batch_still_raises(llm):
    """No request fails alone: nothing to blame, so the step raises (the async engine then
    fails the batch with a 503-style error rather than spin)."""
    engine = LLMEngine(llm.model, llm.tokenizer, CFG)
    real = engine.runner.run

    def run(out):
        if len(out.scheduled) > 1:
            raise RuntimeError("injected batch-wide failure")
        return real(out)

    engine.runner.run = run
    for p, sp in zip(_prompts(llm, 2), _good(2)):
        engine.add_request(p, sp)
    with pytest.raises(RuntimeError, match="batch-wide"):
        engine.step()


def test_offline_generate_raises_the_failure(llm, failing_accept):
    engine = LLMEngine(llm.model, llm.tokenizer, CFG)
    bad = SamplingParams(temperature=0.8, seed=BAD_SEED, max_tokens=20, ignore_eos=True)
    with pytest.raises(RequestFailedError, match="injected"):
        engine.generate(_prompts(llm, 2), [_good(1)[0], bad])
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == CFG.num_blocks


# ---- through the real server ---------------------------------------------------------------------
@pytest.fixture
def server_url(tiny, failing_accept):
    """The real app on a real port (in-process, so the failure can be injected), tiny model."""
    import uvicorn

    from llama3.serve.app import create_app
    from llama3.serve.state import ServerConfig

    path = tiny.path("3.1", "meta")
    config = ServerConfig(
        model=str(path), served_model_name="m", max_num_seqs=8, kv_cache_bytes=16 << 20
    )
    app = create_app(config, model_path=path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the server did not become ready")
    yield url
    server.should_exit = True
    thread.join(30)


def test_the_server_answers_a_failed_request_400_and_the_rest_normally(server_url):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="none", max_retries=0)

    async def good(i: int) -> str:
        r = await client.completions.create(
            model="m", prompt=f"Good request {i}", max_tokens=12, temperature=0
        )
        return r.choices[0].text

    async def bad() -> Exception:
        try:
            await client.completions.create(
                model="m", prompt="Bad request", max_tokens=20, temperature=0.8, seed=BAD_SEED
            )
        except openai.APIStatusError as e:
            return e
        raise AssertionError("the failing request was answered")

    async def bad_stream() -> Exception:
        got = []
        try:
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "Bad stream"}],
                max_tokens=20,
                temperature=0.8,
                seed=BAD_SEED,
                stream=True,
            )
            async for chunk in stream:
                got.append(chunk)
        except openai.APIError as e:
            return e
        raise AssertionError(f"the failing stream ended normally after {len(got)} chunks")

    async def main():
        return await asyncio.gather(good(0), bad(), good(1), bad_stream(), good(2))

    alone = [asyncio.run(_one(server_url, i)) for i in range(3)]
    g0, err, g1, stream_err, g2 = asyncio.run(main())
    assert [g0, g1, g2] == alone
    assert err.status_code == 400 and "injected sampler failure" in err.message
    assert "injected sampler failure" in str(stream_err)
    metrics = httpx.get(f"{server_url}/metrics").text
    assert _gauge(metrics, "llama3_requests_running") == 0
    assert _gauge(metrics, "llama3_requests_waiting") == 0


async def _one(url: str, i: int) -> str:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    r = await client.completions.create(
        model="m", prompt=f"Good request {i}", max_tokens=12, temperature=0
    )
    return r.choices[0].text


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
