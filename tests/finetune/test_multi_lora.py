"""Several LoRA adapters over one base at once: requests for the base and for two PEFT-written
adapters, batched together in the continuous-batching engine, answer exactly as each does alone
and as `Llama.load(adapter=...)` does; the prefix cache keeps each adapter's blocks its own; and
`llama3 serve --lora` routes by `model`, lists the adapters, and loads / unloads them at run time
(through the official openai client and the real HTTP routes)."""

from __future__ import annotations

import copy
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from llama3 import Llama, SamplingParams
from llama3.engine.config import EngineConfig
from llama3.engine.engine import LLMEngine
from llama3.loader import load
from llama3.lora import detach, load_adapter, read_adapter
from llama3.lora.multi import LoRABank, MultiLoRA

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from server import ServerProcess  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time"]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0)
SAMPLED = SamplingParams(
    temperature=0.9, top_p=1.0, max_tokens=6, ignore_eos=True, logprobs=0, seed=11
)
LONG = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)
ROOMY = EngineConfig(
    max_num_seqs=16, max_num_batched_tokens=256, block_size=16, num_blocks=64, max_model_len=256
)
#: a PEFT adapter's (r, alpha, targets, seed): q/v/down, and every projection at another rank
SPECS = {
    "a": (4, 32, ["q_proj", "v_proj", "down_proj"], 5),
    "b": (8, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 6),
}


def _peft_adapter(tiny, out: Path, r: int, alpha: int, targets: list[str], seed: int) -> Path:
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)  # init_lora_weights=False: B is random too, so the adapter matters
    peft.get_peft_model(hf, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi-lora")
    return {n: _peft_adapter(tiny, root / n, *spec) for n, spec in SPECS.items()}


@pytest.fixture(scope="module")
def oracles(tiny, adapters) -> dict[str, Llama]:
    """One adapter over every request, as `Llama.load(adapter=)` runs it (float weights)."""
    path = tiny.path("3.1", "hf")
    out = {"base": Llama.load(path, quantize="none", max_seq_len=256)}
    for n, folder in adapters.items():
        out[n] = Llama.load(path, quantize="none", max_seq_len=256, adapter=folder)
    return out


def _ids(tok, prompts=PROMPTS) -> list[list[int]]:
    return [tok.encode(p, bos=True, eos=False) for p in prompts]


def _engine(path: Path, adapters: dict[str, Path], quantize: str, **kw):
    lm = load(path, device="cpu", dtype="float32", quantize=quantize)
    bank = LoRABank(lm.model)
    ids = {n: bank.add(read_adapter(p, lm.model.params)) for n, p in adapters.items()}
    return LLMEngine(lm.model, lm.tokenizer, kw.pop("config", ROOMY), lora=bank), ids


def _close(got, want, tol: float) -> None:
    assert got.tokens == want.tokens
    assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < tol


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_mixed_batch_equals_each_alone_and_the_python_api(tiny, adapters, oracles, quantize):
    """int8 fuses q|k|v and w1|w3 into one product: each adapter's update lands on its slice."""
    path = tiny.path("3.1", "hf")
    engine, ids = _engine(path, adapters, quantize)
    prompts = _ids(engine.tokenizer)
    jobs = [(p, GREEDY, lid) for lid in (0, ids["a"], ids["b"]) for p in prompts]
    jobs += [(prompts[0], SAMPLED, lid) for lid in (0, ids["a"], ids["b"])]
    for p, sp, lid in jobs:
        engine.add_request(p, sp, None, lid)
    engine.step()
    assert engine.stats().num_running == len(jobs)  # one batch: base, a and b rows together
    engine.abort_all()

    mixed = engine.generate([j[0] for j in jobs], [j[1] for j in jobs], [j[2] for j in jobs])
    alone = [engine.generate([p], sp, [lid])[0] for p, sp, lid in jobs]
    for got, want in zip(mixed, alone):
        _close(got, want, 1e-5)
    assert len({tuple(r.tokens) for r in mixed[: 3 * len(prompts) : len(prompts)]}) == 3

    # the oracle: one adapter over every request, as `Llama.load(adapter=)` runs it
    names = {0: "base", ids["a"]: "a", ids["b"]: "b"}
    if quantize != "none":
        for lid in ids.values():
            engine.lora.remove(lid)
    for lid, name in names.items():
        if quantize == "none":
            lm = oracles[name]
        else:  # the same int8 weights, no bank (quantizing the tiny vocabulary again costs)
            detach(engine.model)
            if name != "base":
                load_adapter(engine.model, adapters[name])
            lm = Llama(engine.model, engine.tokenizer, max_seq_len=256, max_batch_size=1)
        for (p, sp, j), got in zip(jobs, mixed):
            if j == lid:
                _close(got, lm.complete([p], sp)[0], 1e-4)


def test_prefix_cache_keeps_each_adapters_blocks_its_own(tiny, adapters):
    path = tiny.path("3.1", "hf")
    engine, ids = _engine(path, adapters, "none")
    long = _ids(engine.tokenizer, [" ".join(f"word{i}" for i in range(40))])[0]
    assert len(long) > 3 * ROOMY.block_size

    def hits(lid: int):
        before = engine.stats().prefix_cache_hit_tokens
        r = engine.generate([long], GREEDY, [lid])[0]
        return engine.stats().prefix_cache_hit_tokens - before, r

    assert hits(0)[0] == 0
    n_a, first_a = hits(ids["a"])
    assert n_a == 0  # the base's blocks hold the base's k/v: not adapter a's
    n_a2, again_a = hits(ids["a"])
    assert n_a2 >= 3 * ROOMY.block_size  # a's own blocks are reused
    assert hits(ids["b"])[0] == 0
    fresh, fids = _engine(path, adapters, "none")
    want = fresh.generate([long], GREEDY, [fids["a"]])[0]
    _close(first_a, want, 1e-5)
    _close(again_a, want, 1e-5)


def test_removing_the_last_adapter_gives_back_the_plain_model(tiny, adapters):
    path = tiny.path("3.1", "hf")
    engine, ids = _engine(path, adapters, "none")
    lm = load(path, device="cpu", dtype="float32", quantize="none")
    plain = LLMEngine(lm.model, lm.tokenizer, ROOMY)
    prompts = _ids(engine.tokenizer)
    want = plain.generate(prompts, GREEDY)
    for r, w in zip(engine.generate(prompts, GREEDY, [0, 0]), want):  # base rows, adapters loaded
        assert r.tokens == w.tokens and r.logprobs == w.logprobs
    engine.lora.remove(ids["a"])
    assert any(isinstance(m, MultiLoRA) for m in engine.model.modules())
    engine.lora.remove(ids["b"])
    assert not any(isinstance(m, MultiLoRA) for m in engine.model.modules())
    for r, w in zip(engine.generate(prompts, GREEDY), want):
        assert r.tokens == w.tokens and r.logprobs == w.logprobs  # bit-identical
    with pytest.raises(Exception, match="no LoRA adapter with id"):
        engine.add_request(prompts[0], GREEDY, None, ids["a"])


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_base_steps_keep_the_native_decode_kernel_with_adapters_loaded(tiny, adapters, quantize):
    """Adapters loaded: base-only decode steps still run the native int8/int4 kernel (through
    the wrappers, to the base weights) and answer as an engine with no adapter; a step with an
    adapter's rows takes the modules, and its answer is the adapter's."""
    path = tiny.path("3.1", "hf")
    lm = load(path, device="cpu", dtype="float32", quantize=quantize)
    plain = LLMEngine(lm.model, lm.tokenizer, ROOMY)
    prompts = _ids(lm.tokenizer)
    before = lm.model.native_steps
    want = plain.generate(prompts, GREEDY)
    assert lm.model.native_steps - before == GREEDY.max_tokens - 1  # the kernel runs here

    engine, ids = _engine(path, adapters, quantize)
    model = engine.model
    assert any(isinstance(m, MultiLoRA) for m in model.modules())
    before = model.native_steps
    for r, w in zip(engine.generate(prompts, GREEDY, [0, 0]), want):
        assert r.tokens == w.tokens and r.logprobs == w.logprobs
    assert model.native_steps - before == GREEDY.max_tokens - 1  # every decode step native

    before = model.native_steps
    got = engine.generate(prompts, GREEDY, [0, ids["b"]])
    assert model.native_steps == before  # adapter rows in every step: the module path
    assert got[0].tokens == want[0].tokens and got[1].tokens != want[1].tokens
    alone = engine.generate([prompts[1]], GREEDY, [ids["b"]])[0]
    _close(got[1], alone, 1e-5)


# ---- the server --------------------------------------------------------------------------------------
KEY = "sk-multi"


def _complete(client: openai.OpenAI, model: str, prompt: str):
    return client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=GREEDY.max_tokens,
        temperature=0,
        logprobs=0,
        extra_body={"ignore_eos": True},
    )


def test_serve_lora_routes_lists_loads_and_unloads(tiny, adapters, oracles, tmp_path):
    path = tiny.path("3.1", "hf")
    s = ServerProcess(
        model=path,
        served_model_name="base",
        max_model_len=256,
        api_keys=[KEY],
        extra=["--quantize", "none", "--lora", f"a={adapters['a']}"],
    ).start(wait_ready=False)
    try:
        # the oracles' answers while the server loads
        want = {
            n: [lm.complete(_ids(lm.tokenizer, [p]), GREEDY)[0] for p in PROMPTS]
            for n, lm in oracles.items()
        }
        long = oracles["a"].complete(_ids(oracles["a"].tokenizer, [PROMPTS[0]]), LONG)[0]
        s.wait_ready(time.monotonic() + 120)
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=KEY, max_retries=0)
        # a runtime load: not without the key, then with it
        body = {"lora_name": "b", "lora_path": str(adapters["b"])}
        r = httpx.post(s.url + "/v1/load_lora_adapter", json=body, timeout=30)
        assert r.status_code == 401
        r = s.post("/v1/load_lora_adapter", body)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "b" and r.json()["parent"] == "base"

        models = {m.id: m for m in client.models.list().data}
        assert list(models) == ["base", "a", "b"]
        assert models["a"].parent == "base" and models["a"].root == str(adapters["a"])
        assert getattr(models["base"], "parent", None) is None

        # base, a and b at once (one batch on the server), each as the Python API answers it
        jobs = [(n, p) for n in ("base", "a", "b") for p in PROMPTS]
        with ThreadPoolExecutor(len(jobs)) as pool:
            outs = list(pool.map(lambda j: _complete(client, *j), jobs))
        for (n, p), out in zip(jobs, outs):
            w = want[n][PROMPTS.index(p)]
            assert out.model == n
            assert out.choices[0].text == w.text
            got = out.choices[0].logprobs.token_logprobs
            assert max(abs(x - y) for x, y in zip(got, w.logprobs)) < 1e-4

        with pytest.raises(openai.NotFoundError) as e:
            _complete(client, "c", PROMPTS[0])
        msg = e.value.body["message"]
        assert e.value.body["code"] == "model_not_found"
        assert "'c'" in msg and all(f"'{n}'" in msg for n in ("base", "a", "b"))

        _load_errors(s, adapters, tmp_path)
        _unload_waits_for_requests_in_flight(s, client, long.text)
        r = s.post("/v1/unload_lora_adapter", {"lora_name": "b"})
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert [m.id for m in client.models.list().data] == ["base"]
        with pytest.raises(openai.NotFoundError):
            _complete(client, "b", PROMPTS[0])
        r = s.post("/v1/unload_lora_adapter", {"lora_name": "b"})
        assert r.status_code == 404 and "'b'" in r.json()["error"]["message"]
        # the base is served as before once no adapter is left
        out = _complete(client, "base", PROMPTS[0])
        assert out.choices[0].text == want["base"][0].text
    finally:
        s.stop()


def _load_errors(s: ServerProcess, adapters: dict[str, Path], tmp_path: Path) -> None:
    def load_error(name: str, path: Path | str) -> dict:
        r = s.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert "already loaded" in load_error("a", adapters["a"])["message"]
    assert "base model's name" in load_error("base", adapters["a"])["message"]
    assert "no LoRA adapter at" in load_error("x", tmp_path / "nope")["message"]
    not_lora = tmp_path / "prefix"
    not_lora.mkdir()
    (not_lora / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    assert "PREFIX_TUNING" in load_error("x", not_lora)["message"]
    # lora_A of q_proj one column short: trained on another model
    bad = tmp_path / "other-model"
    bad.mkdir()
    (bad / "adapter_config.json").write_bytes((adapters["a"] / "adapter_config.json").read_bytes())
    w = load_file(adapters["a"] / "adapter_model.safetensors")
    k = next(k for k in w if "q_proj.lora_A" in k)
    w[k] = w[k][:, :-1].contiguous()
    save_file(w, bad / "adapter_model.safetensors")
    err = load_error("x", bad)
    assert err["code"] == "invalid_adapter" and "trained on another model" in err["message"]
    r = s.post("/v1/load_lora_adapter", {"lora_name": "x"})
    assert r.status_code == 400 and "lora_path" in r.json()["error"]["message"]


def _unload_waits_for_requests_in_flight(s: ServerProcess, client: openai.OpenAI, want: str):
    """Unloading `a` while a long answer from it streams: the answer runs to its end with the
    adapter (its text is the adapter's, not the base's), new requests for `a` are refused at
    once, and the unload then succeeds."""
    stream = client.completions.create(
        model="a",
        prompt=PROMPTS[0],
        max_tokens=LONG.max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)  # the request is running
    done: dict[str, float] = {}

    def unload() -> None:
        done["status"] = s.post("/v1/unload_lora_adapter", {"lora_name": "a"}).status_code

    t = threading.Thread(target=unload)
    t.start()
    deadline = time.monotonic() + 10
    while "a" in [m.id for m in client.models.list().data] and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.NotFoundError):
        _complete(client, "a", PROMPTS[1])
    rest = list(chunks)
    t.join(30)
    text = "".join([first.choices[0].text] + [c.choices[0].text for c in rest if c.choices])
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] and text == want
    assert done["status"] == 200
    assert "'a': unloading once its requests in flight finish" in s.log  # it did wait


def test_serve_max_loras_caps_loads_and_metrics_count_per_adapter(tiny, adapters):
    """--max-loras 1 with `a` loaded: loading `b` is a 409 naming the cap and the unload route;
    after unloading `a` it loads. /metrics counts requests and generated tokens per served
    model (the base under its name, each adapter under its own), as the responses' usage says."""
    s = ServerProcess(
        model=tiny.path("3.1", "hf"),
        served_model_name="base",
        max_model_len=256,
        api_keys=[KEY],
        extra=["--quantize", "none", "--lora", f"a={adapters['a']}", "--max-loras", "1"],
    ).start()
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=KEY, max_retries=0)
        body = {"lora_name": "b", "lora_path": str(adapters["b"])}
        r = s.post("/v1/load_lora_adapter", body)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "too_many_adapters" and err["param"] == "lora_name"
        assert "--max-loras 1" in err["message"] and "'a'" in err["message"]
        assert "/v1/unload_lora_adapter" in err["message"]
        assert [m.id for m in client.models.list().data] == ["base", "a"]

        used = {"base": 0, "a": 0}
        for model in ("a", "a", "base"):
            used[model] += _complete(client, model, PROMPTS[0]).usage.completion_tokens
        m = s.metrics()
        assert m['llama3_model_requests_total{model="a"}'] == 2
        assert m['llama3_model_requests_total{model="base"}'] == 1
        assert m['llama3_model_generation_tokens_total{model="a"}'] == used["a"] == 12
        assert m['llama3_model_generation_tokens_total{model="base"}'] == used["base"]

        assert s.post("/v1/unload_lora_adapter", {"lora_name": "a"}).status_code == 200
        r = s.post("/v1/load_lora_adapter", body)
        assert r.status_code == 200, r.text
        assert _complete(client, "b", PROMPTS[1]).model == "b"
        m = s.metrics()
        assert m['llama3_model_requests_total{model="b"}'] == 1
        assert m['llama3_model_requests_total{model="a"}'] == 2  # counters outlive the unload
    finally:
        s.stop()


def test_bad_lora_flags_are_one_error_line(tiny, capsys):
    from llama3.cli import main
    from llama3.errors import ConfigError
    from llama3.serve.state import ServerConfig, ServerState

    with pytest.raises(SystemExit) as e:
        main(["serve", "--lora", "no-path-given"])
    assert e.value.code == 2 and "expected NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--lora", "a=x", "--lora", "a=y"]) == 2
    assert "error: --lora name 'a' is used twice" in capsys.readouterr().err
    assert main(["serve", "--lora", "a=x", "--lora", "b=y", "--max-loras", "1"]) == 2
    err = capsys.readouterr().err
    assert "2 --lora adapters exceed --max-loras 1" in err and "raise --max-loras" in err
    assert main(["serve", "--max-loras", "0"]) == 2
    assert "--max-loras must be at least 1" in capsys.readouterr().err
    both = ServerConfig(adapter="x", loras=(("a", "y"),))
    with pytest.raises(ConfigError, match="cannot be combined"):  # before the model loads
        ServerState(both, tiny.path("3.1", "hf")).load(None)
