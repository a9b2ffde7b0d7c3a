"""Training runs: QLoRA over int4 learns with the base bit-unchanged; a real `llama3 finetune`
killed with SIGKILL and resumed ends bit-identical to an uninterrupted run; Ctrl-C saves and
exits cleanly; `llama3 merge` writes weights transformers loads with the adapter's logits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from llama3 import Llama
from llama3.cli import main
from llama3.finetune import Renderer, TrainConfig, Trainer
from llama3.lora import LoRAConfig, attach, merge, save_adapter
from llama3.tokenizer import chat_formatter

from .helpers import chat_records, load_tiny, write_jsonl

TOKENS = torch.tensor([[128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053]])


def _base_tensors(model) -> dict[str, torch.Tensor]:
    """Every frozen tensor of the model (quantized layers' codes/scales included), copied."""
    out = {n: t.detach().clone() for n, t in model.named_parameters() if "lora" not in n}
    out.update({n: b.clone() for n, b in model.named_buffers()})
    return {n.replace(".base.", "."): t for n, t in out.items()}


def test_qlora_int4_loss_falls_and_base_is_unchanged(tiny, tmp_path):
    lm = load_tiny(tiny.path("3.1", "hf"), quantize="int4")
    before = _base_tensors(lm.model)
    r = Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))
    train = [r.example(rec, i) for i, rec in enumerate(chat_records(4))]
    cfg = TrainConfig(
        lr=1e-2, max_steps=8, batch_size=2, checkpointing=True, eval_every=4, packing=True
    )
    lora = LoRAConfig(r=8, alpha=16, dropout=0.0, targets=("wq", "wk", "wv", "wo", "w1", "w3"))
    lines = []
    Trainer(lm.model, lora, train, cfg, tmp_path, eval_examples=train[:2], log=lines.append).run()
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < 0.8 * losses[0], losses
    assert [m["step"] for m in metrics if "eval_loss" in m] == [4, 8]
    assert metrics[-1]["eval_loss"] < metrics[3]["eval_loss"]
    assert metrics[0]["tokens"] == sum(len(e.ids) for e in train)
    assert "step 8/8 loss" in lines[-1] and " eval " in lines[-1] and "tok/s ETA" in lines[-1]
    after = _base_tensors(lm.model)
    assert after.keys() == before.keys() and all(torch.equal(before[n], after[n]) for n in after)
    assert lm.model.layers[0].attention.wqkv.loras.keys() == {"wq", "wk", "wv"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_repo()), env.get("PYTHONPATH", "")])
    return env


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def _finetune_cmd(model, data, out) -> list[str]:
    return [
        sys.executable, "-m", "llama3", "finetune", "--model", str(model), "--data", str(data),
        "--out", str(out), "--max-steps", "20", "--save-every", "4", "--batch-size", "2",
        "--lr", "1e-3", "--warmup-steps", "3", "--lora-dropout", "0.1", "--target", "q,v,down",
        "--seed", "7",
    ]  # fmt: skip


def _wait_for(pred, proc, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_resume_after_sigkill_is_bit_identical(tiny, tmp_path):
    model = tiny.path("3.1", "hf")
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(24))
    whole = tmp_path / "whole"
    subprocess.run(_finetune_cmd(model, data, whole), check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _finetune_cmd(model, data, killed), env=_env(), stderr=subprocess.DEVNULL
    )
    _wait_for(lambda: (killed / "checkpoint-000008").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "adapter_model.safetensors").exists()
    resumed = subprocess.run(
        [*_finetune_cmd(model, data, killed), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stderr
    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(24))
    out = tmp_path / "out"
    cmd = [*_finetune_cmd(tiny.path("3.1", "hf"), data, out)]
    cmd[cmd.index("--save-every") + 1] = "0"
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "metrics.jsonl").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved in" in err and "--resume" in err
    assert len(list(out.glob("checkpoint-*"))) == 1
    # the same --out again without --resume: refused, nothing overwritten
    assert main(cmd[3:]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_merge_to_hf_gives_the_adapters_logits_in_transformers(tiny, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    path = tiny.path("3.1", "hf")
    lm = load_tiny(path)
    cfg = LoRAConfig(r=4, alpha=8, targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    torch.manual_seed(5)
    for lora in attach(lm.model, cfg).values():
        torch.nn.init.normal_(lora.B, 0.0, 0.05)
    save_adapter(lm.model, tmp_path / "ad", cfg)
    lm.model.eval()
    want = lm.model(TOKENS)
    out = tmp_path / "merged"
    assert (
        main(["merge", "--model", str(path), "--adapter", str(tmp_path / "ad"), "--out", str(out)])
        == 0
    )
    assert "14 projections merged" in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(TOKENS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # merged in memory (float weights): the same logits, and no wrapper left
    merged = merge(lm.model)
    torch.testing.assert_close(merged(TOKENS), want, atol=1e-5, rtol=0)
    assert type(merged.layers[0].attention.wq).__name__ == "Linear"
    # and the merged directory runs here without the adapter; so does a merged GGUF
    llm = Llama.load(out, quantize="none", max_seq_len=64)
    torch.testing.assert_close(llm.model(TOKENS), want, atol=1e-4, rtol=0)
    gguf = tmp_path / "merged.gguf"
    argv = ["merge", "--model", str(path), "--adapter", str(tmp_path / "ad"), "--out", str(gguf)]
    assert main([*argv, "--to", "gguf", "--dtype", "f32"]) == 0
    llm = Llama.load(gguf, quantize="none", max_seq_len=64)
    torch.testing.assert_close(llm.model(TOKENS), want, atol=1e-4, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    from llama3.finetune import loss_sum
    from llama3.finetune.data import pad_batch
    from llama3.lora import trainable_parameters

    lm = load_tiny(tiny.path("3.1", "hf"))
    torch.manual_seed(0)
    for lora in attach(lm.model, LoRAConfig(r=4, alpha=8, dropout=0.2)).values():
        torch.nn.init.normal_(lora.B, 0.0, 0.05)
    r = Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))
    b = pad_batch([r.example(rec, i) for i, rec in enumerate(chat_records(3))])
    lm.model.train()  # dropout on: the recomputation must replay the same masks
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        s, n = loss_sum(lm.model, b.tokens, b.labels, checkpointing=checkpointing)
        (s / n).backward()
        grads.append([p.grad.clone() for p in trainable_parameters(lm.model)])
        lm.model.zero_grad(set_to_none=True)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)


def test_frozen_quantized_layers_give_the_input_gradient():
    from llama3.quant.int4 import Int4Linear
    from llama3.quant.int8 import Int8Linear

    torch.manual_seed(0)
    w = torch.randn(96, 64)
    for layer in (Int8Linear.from_float(w), Int4Linear.from_float(w, 32)):
        for rows in (3, 80):  # the kernels' few-row path and the prompt path
            x = torch.randn(rows, 64, requires_grad=True)
            g = torch.randn(rows, 96)
            y = layer(x)
            y.backward(g)
            with torch.no_grad():
                assert torch.equal(y, layer(x))  # the forward is the inference product
            torch.testing.assert_close(x.grad, g @ layer.dequantize(), atol=1e-5, rtol=1e-5)


def test_target_names_in_every_spelling():
    from llama3.lora import parse_targets

    meta = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    assert parse_targets("q,k,v,o,gate,down,up") == meta
    assert parse_targets("q_proj,k_proj,v_proj,o_proj,gate_proj,down_proj,up_proj") == meta
    assert parse_targets(["w3", "wq", "w1", "wk", "wv", "wo", "w2"]) == meta
    assert parse_targets("all-linear") == meta
    assert parse_targets("gate_proj,q") == ("wq", "w1")
