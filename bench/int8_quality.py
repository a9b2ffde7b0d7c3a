"""Quality of `--quantize int8` against the float model: perplexity and KL divergence.

Scores one window of a text (default: this repository's README.md, first --tokens tokens) with
the float model and the int8 model loaded from the same checkpoint, and prints both perplexities,
the mean KL divergence KL(float || int8) of the next-token distributions and the top-1 agreement.
`llama3 perplexity` (sliding windows, any text) is the general tool; this is the quick guard.

    python bench/int8_quality.py [--model PATH] [--text FILE] [--tokens 600]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from llama3 import Llama
from llama3.registry import resolve_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: SmolLM2-135M GGUF)")
    p.add_argument("--text", type=Path, default=REPO / "README.md")
    p.add_argument("--tokens", type=int, default=600)
    args = p.parse_args()
    path = resolve_model(args.model)
    ref = Llama.load(path, max_seq_len=args.tokens + 1)
    q = Llama.load(path, max_seq_len=args.tokens + 1, quantize="int8")
    ids = ref.tokenizer.encode_prompt(args.text.read_text())[: args.tokens]
    x = torch.tensor([ids])
    with torch.inference_mode():
        lf = torch.log_softmax(ref.model(x)[0], -1)
        lq = torch.log_softmax(q.model(x)[0], -1)
    tgt = x[0, 1:, None]

    def ppl(lp: torch.Tensor) -> float:
        return lp[:-1].gather(1, tgt).mean().neg().exp().item()

    kl = (lf.exp() * (lf - lq)).sum(-1).mean().item()
    agree = (lf.argmax(-1) == lq.argmax(-1)).float().mean().item()
    print(f"model: {path}\ntext: {args.text} ({len(ids)} tokens)")
    print(f"perplexity float {ppl(lf):.3f}  int8 {ppl(lq):.3f}  ({ppl(lq) / ppl(lf) - 1:+.1%})")
    print(f"KL(float || int8) {kl:.4f} nats/token  top-1 agreement {agree:.1%}")


if __name__ == "__main__":
    main()
