"""`llama3 finetune`: LoRA / QLoRA supervised fine-tuning on JSONL chat data; PEFT adapter out.

The base model loads as `llama3 chat` loads it, in float unless `--quantize int8|int4` (QLoRA:
the base frozen in this engine's int8/int4 weights, LoRA in float32 over them). The adapter
(`adapter_config.json` + `adapter_model.safetensors`) lands in `--out` beside `metrics.jsonl`
and the `checkpoint-N/` folders; `llama3 chat --adapter OUT` runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidRequestError
from ..quant import SCHEMES
from ..registry import resolve_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="base model (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--data",
        required=True,
        help="training JSONL (messages, prompt/completion, text), or a Hugging Face dataset "
        "with those fields: a save_to_disk folder, Parquet/CSV files or folder, or a hub name; "
        "NAME:SPLIT picks a split (needs pip install datasets)",
    )
    p.add_argument("--eval", help="JSONL or dataset for the eval loss (as --data)")
    p.add_argument("--out", required=True, help="output folder: adapter, metrics, checkpoints")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=16, help="rank (default 16)")
    g.add_argument("--lora-alpha", type=float, default=32.0, help="alpha (default 32)")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="dropout (default 0.05)")
    g.add_argument(
        "--target",
        default="q,k,v,o",
        help="projections to adapt: q,k,v,o,gate,up,down (Meta wq..w3 and HF q_proj..down_proj "
        "names too; all-linear for every one; default q,k,v,o)",
    )
    g.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) (rsLoRA)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    t.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    t.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="clip (0 = off; default 1)")
    t.add_argument("--batch-size", type=int, default=4, help="sequences per micro-batch")
    t.add_argument(
        "--batch-tokens",
        type=int,
        help="micro-batches of up to N padded tokens instead of --batch-size sequences",
    )
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--max-seq-len", type=int, default=1024, help="tokens per example at most")
    t.add_argument("--seed", type=int, default=0, help="LoRA init, data order and dropout seed")
    t.add_argument("--train-on-prompt", action="store_true", help="loss on prompt tokens too")
    t.add_argument("--packing", action="store_true", help="pack short examples into one row")
    t.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    t.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    t.add_argument("--eval-every", type=int, default=0, help="eval loss every N steps (and last)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    m = p.add_argument_group("model")
    m.add_argument(
        "--quantize",
        choices=("none", *SCHEMES),
        default="none",
        help="freeze the base as int8/int4 (QLoRA); default none (float)",
    )
    m.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    m.add_argument("--dtype", help="float32, bfloat16 (default: float32 on CPU)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from ..finetune import TrainConfig, distributed
    from ..lora import LoRAConfig, parse_targets

    out = Path(args.out)
    earlier = [out / "adapter_config.json", out / "metrics.jsonl", *out.glob("checkpoint-*")]
    if not args.resume and any(p.exists() for p in earlier):
        raise InvalidRequestError(
            f"{out} already holds a training run", "pass another --out, or --resume to continue it"
        )
    model_path = resolve_model(args.model)
    lora = LoRAConfig(  # checked before the load: a bad flag fails at once
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=parse_targets(args.target),
        rslora=args.rslora,
        base_model=str(model_path),
    )
    cfg = TrainConfig(
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        grad_accum=args.grad_accum,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        save_every=args.save_every,
        eval_every=args.eval_every,
        packing=args.packing,
        checkpointing=args.checkpointing,
    )
    dp = distributed.init(args.device)  # under torchrun: this rank of a data-parallel run
    try:
        return _train(args, model_path, lora, cfg, out, dp)
    finally:
        distributed.shutdown()


def _train(args, model_path, lora, cfg, out, dp) -> int:
    from ..finetune import Renderer, Trainer, read_examples
    from ..loader import load

    dp.check_batch(cfg.batch_size, cfg.batch_tokens)  # before the load: fail at once
    device = str(dp.device) if dp.world > 1 else args.device
    lm = load(model_path, device=device, dtype=args.dtype, quantize=args.quantize)
    renderer = Renderer(
        lm.tokenizer, _formatter(lm.tokenizer), train_on_prompt=args.train_on_prompt
    )
    train = read_examples(args.data, renderer, cfg.max_seq_len)
    evals = read_examples(args.eval, renderer, cfg.max_seq_len) if args.eval else None
    quiet = args.quiet or not dp.main  # only rank 0 reports
    say = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    trainer = Trainer(lm.model, lora, train, cfg, out, eval_examples=evals, log=say, dp=dp)
    n_params = sum(p.numel() for p in trainer.params)
    ranks = f" on {dp.world} data-parallel ranks" if dp.world > 1 else ""
    say(
        f"{len(train)} examples, {trainer.total_steps} steps, {n_params:,} LoRA parameters "
        f"over {lm.weights_note or 'float weights'}{ranks}"
    )
    if args.resume:
        step = trainer.resume()
        say(f"resumed at step {step}" if step is not None else "no checkpoint: starting anew")
    trainer.run()
    say(f"adapter saved in {out} (run it: llama3 chat --model {model_path} --adapter {out})")
    return 0


def _formatter(tokenizer):
    """The model's chat format, or None for a model without one (then only text data works)."""
    from ..errors import TokenizerError
    from ..tokenizer import chat_formatter

    try:
        return chat_formatter(tokenizer)
    except TokenizerError:
        return None
