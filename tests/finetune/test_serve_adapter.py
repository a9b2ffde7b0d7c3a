"""`llama3 serve --adapter A` serves the adapter unmerged: the real server, through the official
openai client, answers as `Llama.load(adapter=A)` does in-process, and a missing adapter stops
the server with one error line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import openai
import peft
import torch

from llama3 import Llama, SamplingParams

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from server import ServerProcess  # noqa: E402


def _adapter(tiny, out: Path) -> Path:
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    torch.manual_seed(5)
    peft.get_peft_model(hf, cfg).save_pretrained(out)
    return out


def test_serve_runs_the_adapter_as_the_python_api_does(tiny, tmp_path):
    model = tiny.path("3.1", "hf")
    ad = _adapter(tiny, tmp_path / "ad")
    prompts = ["The capital of France is", "Once upon a time"]
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0)
    with_ad = Llama.load(model, quantize="none", max_seq_len=256, adapter=ad)
    base = Llama.load(model, quantize="none", max_seq_len=256)
    want = [
        with_ad.complete([with_ad.tokenizer.encode(p, bos=True, eos=False)], sp)[0] for p in prompts
    ]
    plain = [base.complete([base.tokenizer.encode(p, bos=True, eos=False)], sp)[0] for p in prompts]
    assert [w.logprobs for w in want] != [b.logprobs for b in plain]  # the adapter matters

    s = ServerProcess(model=model, max_model_len=256, extra=["--adapter", str(ad)]).start()
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0)
        name = client.models.list().data[0].id
        for p, w in zip(prompts, want):
            r = client.completions.create(
                model=name,
                prompt=p,
                max_tokens=10,
                temperature=0,
                logprobs=0,
                extra_body={"ignore_eos": True},
            )
            assert r.choices[0].text == w.text
            got = r.choices[0].logprobs.token_logprobs
            assert max(abs(a - b) for a, b in zip(got, w.logprobs)) < 1e-4
    finally:
        s.stop()


def test_serve_with_a_missing_adapter_is_one_error(tiny, tmp_path):
    cmd = [sys.executable, "-m", "llama3", "serve", "--model", str(tiny.path("3.1", "hf"))]
    cmd += ["--port", "0", "--adapter", str(tmp_path / "nope")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors and "no LoRA adapter at" in errors[-1]
    assert "Traceback" not in r.stderr
