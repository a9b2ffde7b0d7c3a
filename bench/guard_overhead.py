"""What a Llama Guard check costs a chat request: guard latency against the answer it screens.

No Llama Guard weights are reachable here, so SmolLM2-135M plays both parts: the chat model
answers `--tokens` tokens (greedy, EOS ignored, so every round decodes the same work), and the
same weights, loaded again as a `Guard` (the Llama Guard 2 prompt, S1-S11: the Guard 3 prompt
needs the Llama 3 vocabulary), classify
the user turn (stage "input", before generation: it adds to the time to first token) and the
answer (stage "output": it adds to the end of a non-streamed reply). A guard model the size of
the chat model therefore shows the cost's shape; a real Llama Guard 3-1B is about 9x SmolLM2's
weights, so its checks cost correspondingly more on CPU.

    python bench/guard_overhead.py [--tokens 128] [--rounds 5] [--verdict-tokens 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llama3 import Llama, SamplingParams
from llama3.guard import Guard
from llama3.guard.guard import MAX_VERDICT_TOKENS
from llama3.guard.prompt import encode
from llama3.registry import default_model_path

QUESTION = "Tell me about the history of lighthouses and how their lamps worked."


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--verdict-tokens",
        type=int,
        default=MAX_VERDICT_TOKENS,
        help="tokens each verdict decodes (a real guard stops after `safe` and end of turn: 2)",
    )
    args = ap.parse_args()
    path = default_model_path()
    chat = Llama.load(path, device="cpu", max_seq_len=2048, max_batch_size=1)
    guard = Guard(Llama.load(path, device="cpu", max_seq_len=2048, max_batch_size=1), version=2)
    # SmolLM2 never ends a verdict, so it decodes as many tokens as a guard is allowed
    guard._params = SamplingParams(temperature=0.0, max_tokens=args.verdict_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    dialog = [{"role": "user", "content": QUESTION}]
    answer = chat.chat([dialog], params)[0].text  # warm-up, and the answer the output check reads
    convo = [*dialog, {"role": "assistant", "content": answer}]
    guard.classify(dialog, "User")  # warm-up
    gen, g_in, g_out = [], [], []
    for _ in range(args.rounds):
        gen.append(timed(lambda: chat.chat([dialog], params))[1])
        g_in.append(timed(lambda: guard.classify(dialog, "User"))[1])
        g_out.append(timed(lambda: guard.classify(convo, "Agent"))[1])
    tok = guard.llm.tokenizer
    n_in = len(encode(tok, 2, dialog, guard.categories, "User"))
    n_out = len(encode(tok, 2, convo, guard.categories, "Agent"))
    m_gen, m_in, m_out = (statistics.median(x) for x in (gen, g_in, g_out))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}, {args.rounds} rounds (median)"
    )
    print("| | prompt tokens | seconds | share of the answer's time |")
    print("|---|---:|---:|---:|")
    print(f"| answer: {args.tokens} tokens generated | - | {m_gen:.3f} | 100 % |")
    print(f"| guard input check (before the answer) | {n_in} | {m_in:.3f} | {m_in / m_gen:.0%} |")
    print(f"| guard output check (after it) | {n_out} | {m_out:.3f} | {m_out / m_gen:.0%} |")
    print(
        f"| both checks, per request | | {m_in + m_out:.3f} | {(m_in + m_out) / m_gen:.0%} |"
        f"\n(each verdict decodes {args.verdict_tokens} tokens; SmolLM2 is no guard, so "
        "its verdicts fail closed and count as unsafe: only the time is meaningful)"
    )


if __name__ == "__main__":
    main()
