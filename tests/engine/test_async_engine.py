"""AsyncLLMEngine: the engine on its own thread, one asyncio stream per request. Concurrent
requests get the tokens the synchronous engine gives; leaving a stream early aborts its request and
frees its blocks; a bad request fails at once in the caller."""

from __future__ import annotations

import asyncio

import pytest

from llama3 import Llama, SamplingParams
from llama3.engine.async_engine import AsyncLLMEngine
from llama3.engine.config import EngineConfig
from llama3.engine.engine import LLMEngine
from llama3.errors import ContextLengthExceeded

CFG = EngineConfig(
    max_num_seqs=4, max_num_batched_tokens=32, block_size=8, num_blocks=64, max_model_len=128
)


@pytest.fixture(scope="module")
def llm(tiny):
    return Llama.load(tiny.path("3.2", "hf"), max_seq_len=128, max_batch_size=1)


def test_concurrent_streams_equal_the_sync_engine_and_abort_frees(llm):
    prompts = [llm.tokenizer.encode_prompt(t) for t in ("one", "two words", "three more words")]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    want = [r.tokens for r in LLMEngine(llm.model, llm.tokenizer, CFG).generate(prompts, params)]
    engine = AsyncLLMEngine(LLMEngine(llm.model, llm.tokenizer, CFG))

    async def collect(i: int) -> list[int]:
        return [o.event.token async for o in engine.generate(prompts[i], params, f"r{i}")]

    async def hang_up() -> int:
        n = 0
        long = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
        async for _ in engine.generate(prompts[0], long, "quitter"):
            n += 1
            if n == 3:
                break  # leaving the loop aborts the request
        return n

    async def main():
        engine.start()
        try:
            with pytest.raises(ContextLengthExceeded):
                engine.add_request(list(range(1, 200)), params, "too-long")
            got = await asyncio.gather(*(collect(i) for i in range(3)), hang_up())
            for _ in range(200):  # the abort lands before the next step
                if engine.num_unfinished == 0 and not engine.engine.has_unfinished():
                    break
                await asyncio.sleep(0.01)
            return got
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    got = asyncio.run(main())
    assert got[:3] == want and got[3] == 3
    stats = engine.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks
    assert not engine.is_running
