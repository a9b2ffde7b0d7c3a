"""transformers + PEFT as the oracle: the same tiny random Llama, the same LoRA matrices (nonzero B),
the same padded batch give the same loss and LoRA gradients for several AdamW steps; adapters move
between PEFT and this engine both ways with equal logits."""

from __future__ import annotations

import copy

import pytest
import torch

from llama3 import Llama
from llama3.cli import main
from llama3.finetune import Renderer, loss_sum
from llama3.finetune.data import pad_batch
from llama3.lora import (
    LoRAConfig,
    LoRAFused,
    adapters,
    attach,
    load_adapter,
    parse_targets,
    peft_state_dict,
)
from llama3.lora.config import hf_module
from llama3.tokenizer import chat_formatter

from .helpers import chat_records, load_tiny, to_meta_rows

peft = pytest.importorskip("peft")
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENS = torch.tensor([[128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679]])


def _peft_name(ours: str, which: str) -> str:
    return f"base_model.model.{hf_module(ours)}.lora_{which}.default.weight"


def _heads(name: str, lm) -> int | None:
    a = lm.checkpoint.args
    return {"wq": a.n_heads, "wk": a.kv_heads}.get(name.rsplit(".", 1)[1])


def test_loss_and_lora_gradients_equal_peft_for_several_steps(tiny):
    path = tiny.path("3.1", "hf")
    lm = load_tiny(path)
    torch.manual_seed(1)
    made = attach(lm.model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=parse_targets("all")))
    with torch.no_grad():
        for lora in made.values():
            lora.B.normal_(0.0, 0.05)  # nonzero B: the update takes part from the first step
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=HF_TARGETS)
    pm = peft.get_peft_model(hf, cfg)
    missing = peft.set_peft_model_state_dict(pm, peft_state_dict(lm.model)).unexpected_keys
    assert not missing
    renderer = Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))
    examples = [renderer.example(r, i) for i, r in enumerate(chat_records(3))]
    batch = pad_batch(examples)
    mask = torch.zeros_like(batch.tokens)
    for i, e in enumerate(examples):
        mask[i, : len(e.ids)] = 1
    assert len({len(e.ids) for e in examples}) > 1  # padding is exercised
    theirs = dict(pm.named_parameters())
    ours_opt = torch.optim.AdamW([p for m in made.values() for p in (m.A, m.B)], lr=1e-2)
    their_opt = torch.optim.AdamW([p for p in theirs.values() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        s, n = loss_sum(lm.model, batch.tokens, batch.labels)
        loss = s / n
        loss.backward()
        ref = pm(input_ids=batch.tokens, attention_mask=mask, labels=batch.labels).loss
        ref.backward()
        assert abs(loss.item() - ref.item()) < 1e-5
        for name, lora in adapters(lm.model).items():
            ga, gb = theirs[_peft_name(name, "A")].grad, theirs[_peft_name(name, "B")].grad
            heads = _heads(name, lm)
            if heads is not None:
                gb = to_meta_rows(gb, heads)
            torch.testing.assert_close(lora.A.grad, ga, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lora.B.grad, gb, atol=1e-5, rtol=1e-5)
        ours_opt.step()
        their_opt.step()
        ours_opt.zero_grad()
        their_opt.zero_grad()


def _logits_peft(tiny, adapter_dir) -> torch.Tensor:
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    pm = peft.PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    with torch.no_grad():
        return pm(TOKENS).logits


def test_our_adapter_loads_in_peft_with_equal_logits(tiny, tmp_path):
    from llama3.lora import save_adapter

    path = tiny.path("3.1", "hf")
    lm = load_tiny(path)
    cfg = LoRAConfig(r=4, alpha=16, dropout=0.1, targets=parse_targets("q,k,v,o,gate,up,down"))
    torch.manual_seed(2)
    for lora in attach(lm.model, cfg).values():
        torch.nn.init.normal_(lora.B, 0.0, 0.05)
    save_adapter(lm.model, tmp_path / "ad", cfg)
    lm.model.eval()
    ours = lm.model(TOKENS)
    torch.testing.assert_close(_logits_peft(tiny, tmp_path / "ad"), ours, atol=1e-4, rtol=0)
    # and the same folder back through Llama.load(adapter=)
    llm = Llama.load(path, quantize="none", max_seq_len=64, adapter=tmp_path / "ad")
    torch.testing.assert_close(llm.model(TOKENS), ours, atol=1e-5, rtol=0)


def test_peft_adapter_loads_here_with_equal_logits(tiny, tmp_path):
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        use_rslora=True,  # alpha / sqrt(r)
        target_modules=["q_proj", "k_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        init_lora_weights=False,  # random B: a visible update
    )
    torch.manual_seed(3)
    pm = peft.get_peft_model(hf, cfg)
    pm.save_pretrained(tmp_path / "peft")
    want = _logits_peft(tiny, tmp_path / "peft")
    base = Llama.load(tiny.path("3.1", "hf"), quantize="none", max_seq_len=64)
    llm = Llama.load(
        tiny.path("3.1", "hf"), quantize="none", max_seq_len=64, adapter=tmp_path / "peft"
    )
    assert (base.model(TOKENS) - want).abs().max() > 1e-2  # the adapter changes the logits
    torch.testing.assert_close(llm.model(TOKENS), want, atol=1e-4, rtol=0)
    # over an int8 base (q/k/v fused into one product): the adapter changes the logits as it
    # changes the float model's, up to int8's rounding
    q = load_tiny(tiny.path("3.1", "hf"), quantize="int8").model
    before = q(TOKENS)
    load_adapter(q, tmp_path / "peft")
    assert isinstance(q.layers[0].attention.wqkv, LoRAFused)
    effect = want - base.model(TOKENS)
    assert (q(TOKENS) - before - effect).abs().max() < 0.1 * effect.abs().max()


def test_bad_adapters_are_one_clear_error(tiny, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    path = str(tiny.path("3.1", "hf"))
    assert main(["generate", "--model", path, "--adapter", str(tmp_path / "nope"), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no LoRA adapter at") and "adapter_config.json" in err
    assert len(err.splitlines()) == 1
    # shapes of another model
    hf = copy.deepcopy(tiny.hf_model("3.1"))
    peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["v_proj"])).save_pretrained(
        tmp_path / "ad"
    )
    f = tmp_path / "ad" / "adapter_model.safetensors"
    sd = load_file(f)
    save_file({k: torch.cat([v, v]) if "lora_B" in k else v for k, v in sd.items()}, f)
    assert main(["generate", "--model", path, "--adapter", str(tmp_path / "ad"), "hi"]) == 2
    err = capsys.readouterr().err
    assert "self_attn.v_proj" in err and "trained on another model" in err
    assert main(["finetune", "--model", path, "--data", "x", "--out", "y", "--target", "qq"]) == 2
    assert "unknown LoRA target 'qq'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, message",
    [
        ({"use_dora": True}, "use_dora=True is not supported"),
        ({"init_lora_weights": "pissa"}, "changes the base weights"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["lm_head"]}, "unknown LoRA target 'lm_head'"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    ],
)
def test_adapter_features_we_do_not_run_are_refused(field, message):
    from llama3.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=message):
        LoRAConfig.from_peft({"r": 4, "target_modules": ["q_proj"], **field}, "adapter_config.json")
