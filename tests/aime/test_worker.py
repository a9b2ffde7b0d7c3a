"""`llama3 aime-worker` behind the real AIME API Server, checked against the offline model.

Clients use the server's own client API (login, POST /llama3_chat, /llama3_chat/progress); the
oracle is `Llama.chat` / `Llama.complete` on the same GGUF, greedy, with the same token limit.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from aime_harness import AimeClient, Worker

from llama3 import SamplingParams

TOPICS = ("llamas", "the moon", "bread", "rivers", "owls")


def offline_chat(llm, dialogs, max_tokens):
    """Each dialog alone: the engine gives every job exactly that, whatever it shares a step with
    (an offline batch pads and steps prompts together, which moves the last bits)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    return [llm.chat([d], params)[0] for d in dialogs]


def ask(url: str, **inputs):
    c = AimeClient(url)
    try:
        return c.request(**inputs)
    finally:
        c.close()


def test_more_concurrent_jobs_than_slots_match_the_offline_model(aime_server, worker, smollm2):
    dialogs = [[{"role": "user", "content": f"Tell me one fact about {t}."}] for t in TOPICS]
    want = offline_chat(smollm2, dialogs, 12)
    with ThreadPoolExecutor(len(dialogs)) as pool:
        futures = [
            pool.submit(ask, aime_server.url, chat_context=d, temperature=0, max_gen_tokens=12)
            for d in dialogs
        ]
        got = [f.result(timeout=120) for f in futures]
    for g, w in zip(got, want):
        assert g["success"] and "error" not in g, g
        assert g["text"] == w.text
        assert g["num_generated_tokens"] == len(w.tokens)
        assert g["prompt_length"] == len(w.prompt_tokens)
        assert g["current_context_length"] == len(w.prompt_tokens) + len(w.tokens)
        assert g["model_name"] == "SmolLM2-135M-Instruct.Q4_1"
        assert g["max_seq_len"] == 512
        assert g["auth"].endswith("_1xCPU")  # the worker meta data the server passes on


def test_plain_text_prompt_input_and_text_parts(aime_server, worker, smollm2, client):
    n = 10
    text = client.request(
        text_context="The three primary colors are",
        prompt_input=" red,",
        temperature=0,
        max_gen_tokens=n,
    )
    want = smollm2.complete(
        ["The three primary colors are red,"], SamplingParams(temperature=0, max_tokens=n)
    )[0]
    assert text["text"] == want.text and text["prompt_length"] == len(want.prompt_tokens)

    only_input = client.request(prompt_input="Once upon a time", temperature=0, max_gen_tokens=n)
    want = smollm2.complete(["Once upon a time"], SamplingParams(temperature=0, max_tokens=n))[0]
    assert only_input["text"] == want.text

    # chat_context + prompt_input = the context with one more user turn, in ChatML (SmolLM2's
    # template); content given as text parts reads as the joined string.
    system = {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]}
    chat = client.request(
        chat_context=[system],
        prompt_input="What color is the sky?",
        temperature=0,
        max_gen_tokens=n,
    )
    dialog = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What color is the sky?"},
    ]
    want = offline_chat(smollm2, [dialog], n)[0]
    assert chat["text"] == want.text and chat["prompt_length"] == len(want.prompt_tokens)


def test_progress_is_cumulative_and_ends_in_the_result(aime_server, worker, smollm2, client):
    dialog = [{"role": "user", "content": "Write a long story about a dragon."}]
    n = 300  # several progress updates (5 a second) on a fast CPU too: ~1 s at 300 tok/s
    want = offline_chat(smollm2, [dialog], n)[0]
    job = client.request(wait=False, chat_context=dialog, temperature=0, max_gen_tokens=n)
    seen, t0 = [], time.monotonic()
    while True:
        p = client.progress(job["job_id"])
        assert p["success"], p
        if "job_result" in p:
            result = p["job_result"]
            break
        data = p.get("progress", {}).get("progress_data") or {}
        if data and (not seen or seen[-1] != data):
            seen.append(data)
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert result["text"] == want.text and result["num_generated_tokens"] == len(want.tokens)
    assert len(seen) >= 2, seen  # the answer streamed, in several updates
    counts = [d["num_generated_tokens"] for d in seen]
    assert counts == sorted(counts) and counts[-1] < len(want.tokens)
    for d in seen:
        assert want.text.startswith(d["text"])  # cumulative, never a delta
        assert d["current_context_length"] == len(want.prompt_tokens) + d["num_generated_tokens"]
    assert len(seen) <= 5 * took + 2  # at most 5 updates a second


def test_a_long_job_does_not_hold_back_short_ones(aime_server, worker, smollm2, client):
    """Continuous batching: with 2 slots, 4 short jobs pass a long one that keeps running (AIME's
    static batches would hold the second slot until the long job ended)."""
    long_dialog = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    assert len(offline_chat(smollm2, [long_dialog], 120)[0].tokens) == 120  # it runs to the limit
    long = client.request(wait=False, chat_context=long_dialog, temperature=0, max_gen_tokens=120)
    while client.progress(long["job_id"])["job_state"] != "processing":
        time.sleep(0.05)
    short = [[{"role": "user", "content": f"Say hello to {t}."}] for t in TOPICS[:4]]
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(ask, aime_server.url, chat_context=d, temperature=0, max_gen_tokens=6)
            for d in short
        ]
        got = [f.result(timeout=120) for f in futures]
    assert "job_result" not in client.progress(long["job_id"])  # still running
    assert [g["text"] for g in got] == [w.text for w in offline_chat(smollm2, short, 6)]
    while "job_result" not in (p := client.progress(long["job_id"])):
        time.sleep(0.1)
    assert p["job_result"]["num_generated_tokens"] == 120


def test_bad_jobs_get_an_error_result_and_the_worker_goes_on(aime_server, worker, client):
    too_long = client.request(text_context="word " * 600, max_gen_tokens=4)
    assert too_long["success"] and "context window is 512 tokens" in too_long["error"]
    assert too_long["num_generated_tokens"] == 0
    # The server checks roles but passes any non-list content through; the worker names it.
    bad = client.request(chat_context=[{"role": "user", "content": 5}], max_gen_tokens=4)
    assert "content of type int" in bad["error"]
    ok = client.request(prompt_input="Hello", temperature=0, max_gen_tokens=3)
    assert "error" not in ok and ok["num_generated_tokens"] == 3


def test_a_wrong_worker_key_is_refused_before_the_model_loads(aime_server, smollm2_path):
    w = Worker(aime_server.url, smollm2_path, auth_key="0" * 32).start(wait_ready=False)
    assert w.wait(60) == 2
    w.err.wait_for(r"^error: Worker not authorized: .* refused the auth key", 5)
    assert not any("serving" in line for line in w.err.lines)


def test_an_unknown_job_type_is_refused(aime_server, smollm2_path):
    w = Worker(aime_server.url, smollm2_path, extra=["--job-type", "nope"]).start(wait_ready=False)
    assert w.wait(60) == 2
    w.err.wait_for(r"^error: the API server .* has no endpoint for job type 'nope'", 5)
