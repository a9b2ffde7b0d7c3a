"""`llama3 perplexity [MODEL] --text FILE`: perplexity with a sliding window, and with
`--kl-divergence-base REF` the KL divergence against a reference model (a float original)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InvalidRequestError
from ..parallel import current
from ..quant import LOAD_CHOICES, SCHEMES_HELP
from .args import add_adapter_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="checkpoint (or use --model)")
    p.add_argument("--model", "-m", help="checkpoint (default: SmolLM2-135M-Instruct)")
    p.add_argument("--text", required=True, type=Path, help="a UTF-8 text file")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (512)")
    p.add_argument("--stride", type=int, help="window step in tokens (default: ctx / 2)")
    p.add_argument(
        "--kl-divergence-base", metavar="REF", help="reference model: report KL(REF || MODEL)"
    )
    p.add_argument(
        "--quantize",
        choices=LOAD_CHOICES,
        help="quantize MODEL (not the reference): " + SCHEMES_HELP,
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.add_argument("--dtype", help="float32, bfloat16, float16")
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_adapter_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..eval.perplexity import perplexity
    from ..generation.llama import Llama
    from ..registry import resolve_model

    if args.model_pos and args.model:
        raise InvalidRequestError("MODEL given twice", "pass it either first or with --model")
    if not args.text.is_file():
        raise InvalidRequestError(f"no such text file: {args.text}", "pass --text FILE")
    try:
        text = args.text.read_text("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{args.text} is not UTF-8 text", "convert it to UTF-8") from None
    path = resolve_model(args.model_pos or args.model)
    window = args.ctx + 1
    llm = Llama.load(
        path,
        device=args.device,
        dtype=args.dtype,
        max_seq_len=window,
        quantize=args.quantize,
        tensor_parallel=current(),
        adapter=args.adapter,
    )
    ref = None
    if args.kl_divergence_base:
        ref_path = resolve_model(args.kl_divergence_base)
        ref = Llama.load(
            ref_path, device=args.device, dtype=args.dtype, max_seq_len=window, quantize="none"
        ).model
    tokens = llm.tokenizer.encode_prompt(text)
    if args.max_tokens:
        tokens = tokens[: args.max_tokens]
    stride = args.stride or max(1, args.ctx // 2)
    r = perplexity(llm.model, tokens, ctx=args.ctx, stride=stride, reference=ref)
    out = {
        "model": str(path),
        "quantize": args.quantize,
        "text": str(args.text),
        "tokens_scored": r.tokens_scored,
        "windows": r.windows,
        "ctx": args.ctx,
        "stride": stride,
        "nll": r.nll,
        "perplexity": r.perplexity,
        "kl_divergence_base": args.kl_divergence_base,
        "kl_divergence": r.kl_divergence,
        "top1_agreement": r.top1_agreement,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{path.name}: perplexity {r.perplexity:.4f} over {r.tokens_scored} tokens "
        f"({r.windows} windows of {args.ctx}, stride {stride})"
    )
    if r.kl_divergence is not None:
        print(
            f"KL({Path(args.kl_divergence_base).name} || model) {r.kl_divergence:.5f} nats/token, "
            f"top-1 agreement {r.top1_agreement:.2%}"
        )
    sys.stdout.flush()
    return 0
