"""Raw HTTP for every error the server returns: OpenAI's error shape, the right status, a message
naming the problem, and a server that keeps serving afterwards."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello"}]


def assert_error(r: httpx.Response, status: int, *, param: str | None = None, says: str = ""):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    assert says.lower() in err["message"].lower(), err["message"]
    return err


def chat(**kw):
    return {"messages": HELLO, "max_tokens": 4, "temperature": 0, **kw}


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (chat(temperature="hot"), "temperature", "number"),
        (chat(temperature=1e308), "temperature", "less than or equal"),
        (chat(max_tokens=10**30), "max_tokens", ""),
        (chat(max_tokens=0), "max_tokens", "greater than or equal"),
        (chat(n=0), "n", ""),
        (chat(n=1000), "n", ""),
        (chat(top_p=0), "top_p", ""),
        (chat(seed="x"), "seed", ""),
        (chat(stop=[""]), "stop", "empty"),
        (chat(stream="yes"), "stream", "boolean"),
        (chat(logit_bias={"abc": 5}), "logit_bias", "token id"),
        (chat(logit_bias={"0": 500}), "logit_bias", ""),
        (chat(top_logprobs=3), "top_logprobs", "logprobs"),
        (chat(stream_options={"include_usage": True}), "stream_options", "stream"),
        (chat(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools", "function name"),
        (chat(tool_choice="required"), "tool_choice", "needs tools"),
        (chat(response_format={"type": "xml"}), "response_format", "xml"),
        (chat(frobnicate=1), "frobnicate", "unrecognized request field"),
        ({"messages": [], "max_tokens": 4}, "messages", ""),
        ({"max_tokens": 4}, "messages", "required"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", ""),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "missing"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
            "",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name", ""),
    ],
)
def test_invalid_chat_parameters_are_400_naming_the_field(server, body, param, says):
    assert_error(server.post(CHAT, body), 400, param=param, says=says)


def test_unsupported_completion_fields_are_refused(server):
    assert_error(
        server.post("/v1/completions", {"prompt": "x", "best_of": 3}), 400, param="best_of"
    )
    assert_error(
        server.post("/v1/completions", {"prompt": "x", "suffix": "y"}), 400, param="suffix"
    )
    assert_error(server.post("/v1/completions", {"prompt": []}), 400, param="prompt")
    assert_error(server.post("/v1/completions", {"prompt": ""}), 400, param="prompt")
    r = server.post("/v1/completions", {"prompt": [10**9]})
    assert_error(r, 400, param="prompt", says="outside the vocabulary")


def test_malformed_bodies(server):
    def raw(data: bytes, ctype: str = "application/json") -> httpx.Response:
        return httpx.post(server.url + CHAT, content=data, headers={"content-type": ctype})

    assert_error(raw(b"{not json"), 400, says="not valid json")
    assert_error(raw(b""), 400)
    assert_error(raw(b"[1, 2, 3]"), 400)
    assert_error(raw(b'{"messages": "\xff\xfe invalid utf-8"}'), 400)
    assert_error(raw(b"null"), 400)


def test_context_overflow_states_the_numbers(server):
    long = "word " * 3000
    r = server.post(CHAT, {"messages": [{"role": "user", "content": long}], "max_tokens": 4})
    err = assert_error(r, 400, param="prompt", says="context window is 1024 tokens")
    assert err["code"] == "context_length_exceeded"
    r = server.post(CHAT, chat(max_tokens=5000))
    err = assert_error(r, 400, says="5000 new tokens were asked for")
    assert err["code"] == "context_length_exceeded"


def test_unknown_model_and_route_are_404(server):
    assert_error(server.post(CHAT, chat(model="gpt-4")), 404, param="model", says="gpt-4")
    assert_error(server.get("/v1/models/gpt-4"), 404, param="model")
    assert_error(server.get("/v1/nothing-here"), 404, says="no route")
    assert_error(server.get(CHAT), 405)


def test_oversized_body_is_413(server):
    big = {"messages": [{"role": "user", "content": "x" * (10 << 20)}]}
    assert_error(server.post(CHAT, big), 413, says="larger than")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 65536
        yield b'"}]}'

    r = httpx.post(
        server.url + CHAT, content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(r, 413)


def test_a_burst_of_bad_requests_leaves_the_server_healthy(server):
    bodies = [
        b"{",
        b'{"messages": 5}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        json.dumps(chat(max_tokens=-1)).encode(),
        json.dumps(chat(temperature=float("1e400") if False else 1e999)).encode(),
        b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
        b"\x00" * 1000,
    ]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        statuses = [
            c.post(CHAT, content=b, headers={"content-type": "application/json"}).status_code
            for b in bodies * 5
        ]
    assert all(400 <= s < 500 or s == 200 for s in statuses), statuses
    assert server.get("/health").status_code == 200
    r = server.post(CHAT, chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    counts = server.metrics()
    assert counts['llama3_requests_total{route="/v1/chat/completions",status="400"}'] >= 25


def test_api_keys_cors_queue_and_timeouts(new_server):
    s = new_server(
        api_keys=["sk-one", "sk-two"],
        max_num_seqs=1,
        max_queue=2,
        request_timeout=4,
        allowed_origins=["http://example.test"],
        max_body_size="64KiB",
    ).start()
    url = s.url
    # 401 on every route but /health and the page, with or without a wrong key
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", CHAT)]:
        r = httpx.request(method, url + path, json=chat())
        assert_error(r, 401, says="missing api key")
        r = httpx.request(
            method, url + path, json=chat(), headers={"Authorization": "Bearer sk-wrong"}
        )
        assert_error(r, 401, says="invalid api key")
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/").status_code == 200
    ok = httpx.post(url + CHAT, json=chat(), headers={"Authorization": "Bearer sk-two"})
    assert ok.status_code == 200
    # CORS: the configured origin may call, a preflight needs no key
    pre = httpx.options(
        url + CHAT,
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://example.test"
    other = httpx.get(url + "/health", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers
    # 413 at the configured limit
    r = s.post(CHAT, {"messages": [{"role": "user", "content": "z" * 70000}]})
    assert_error(r, 413)

    # One slot, two queue places: a long request runs, two wait, a fourth gets 429.
    long = chat(max_tokens=900, ignore_eos=True, messages=[{"role": "user", "content": "Go"}])
    results: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        results[name] = s.post(CHAT, long, timeout=60)

    threads = [threading.Thread(target=send, args=(n,)) for n in ("a", "b", "c")]
    threads[0].start()
    _wait_for(lambda: s.metrics().get("llama3_requests_running") == 1)
    threads[1].start()
    threads[2].start()
    _wait_for(lambda: s.metrics().get("llama3_requests_waiting") == 2)
    r = s.post(CHAT, chat())
    err = assert_error(r, 429, says="busy")
    assert r.headers["retry-after"] == "1" and err["code"] == "queue_full"
    for t in threads:
        t.join()
    # The running one ran past its 4 s (504). When it stops, one waiting request takes the slot
    # and the other, queued behind it, reaches its deadline without starting (408).
    assert_error(results["a"], 504, says="did not finish within 4 s")
    waited = sorted(results[n].status_code for n in ("b", "c"))
    assert waited in ([408, 408], [408, 504]), waited
    assert_error(results["b" if results["b"].status_code == 408 else "c"], 408, says="waited 4 s")
    # and the server is fine afterwards
    _wait_for(lambda: s.metrics().get("llama3_requests_running") == 0)
    assert s.post(CHAT, chat()).status_code == 200
    m = s.metrics()
    assert m["llama3_kv_cache_free_blocks"] == m["llama3_kv_cache_blocks"]


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
