"""Many clients at once: 32 concurrent streams all get the answer the model gives alone, to the
bit of every token's logprob, and clients that disconnect mid-stream leave nothing behind (no
running request, every KV block free)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from llama3.generation.params import SamplingParams

TOPICS = ["the moon", "a red fox", "old castles", "the river Nile"]
MAX = 20


def body(i: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Write two sentences about {TOPICS[i % 4]}."}],
        "temperature": 0,
        "max_tokens": MAX,
        "stream": True,
        "logprobs": True,
    }


async def stream_text(client: httpx.AsyncClient, payload: dict, stop_after: int | None = None):
    """(content, each token's logprob) of the stream; with `stop_after`, hang up after that many
    content chunks (None)."""
    text, logprobs, n = "", [], 0
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            logprobs += [t["logprob"] for t in (choice.get("logprobs") or {}).get("content") or []]
            if choice["delta"].get("content"):
                text += choice["delta"]["content"]
                n += 1
                if stop_after is not None and n >= stop_after:
                    return None  # leaving the block closes the connection
    return text, logprobs


def test_32_concurrent_streams_and_10_disconnects(server, smollm2):
    # Each prompt alone: a step's rows are whatever was batched with whom (decodes beside prompt
    # chunks, a prefix-cache hit's remainder, hang-ups leaving), and none of it may move a bit.
    alone = SamplingParams(temperature=0, max_tokens=MAX, logprobs=0)
    want = []
    for t in TOPICS:
        [r] = smollm2.chat(
            [[{"role": "user", "content": f"Write two sentences about {t}."}]], alone
        )
        want.append((r.text, list(r.logprobs)))

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as c:
            full = [stream_text(c, body(i)) for i in range(32)]
            hang_ups = [stream_text(c, body(i) | {"max_tokens": 200}, 2) for i in range(10)]
            return await asyncio.gather(*full, *hang_ups)

    results = asyncio.run(main())
    for i, got in enumerate(results[:32]):
        assert got == want[i % 4], i
    assert results[32:] == [None] * 10

    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        idle = m["llama3_requests_running"] == 0 and m["llama3_requests_waiting"] == 0
        if idle and m["llama3_kv_cache_free_blocks"] == m["llama3_kv_cache_blocks"]:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    # the hung-up requests were aborted, not run to their 200 tokens
    assert m["llama3_generation_tokens_total"] < 32 * MAX + 10 * 100
    assert m["llama3_prefix_cache_hit_tokens"] > 0  # 32 prompts share 4 texts
