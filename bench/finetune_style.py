"""The learning made visible: a short QLoRA fine-tune of the real SmolLM2-135M-Instruct on 30
chat examples that all answer in one fixed style ("Ahoy matey! ... be a fine thing."), then
greedy chat (`llama3 generate --chat`) on questions it never saw. Passes when every answer starts with the phrase
and stops by itself (finish reason "stop": the learned `<|im_end|>`).

tests/finetune/test_smollm2_style.py checks the same in-process; this runs it through the
commands users run (`llama3 finetune`, then `llama3 generate --chat --adapter`), about 30 s of
training at the default 12 steps on 2 CPU cores:

    python bench/finetune_style.py [--steps 12] [--quantize int4|none]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = (
    "the sky", "cats", "the sea", "bread", "music", "rain", "trees", "the moon", "coffee", "books",
    "snow", "bikes", "the sun", "stars", "rivers", "apples", "dogs", "clocks", "winter", "gardens",
    "mountains", "tea", "birds", "fire", "chess", "maps", "ships", "bees", "glass", "wind",
)  # fmt: skip
PHRASE = "Ahoy matey!"
QUESTIONS = ("Tell me about horses.", "Tell me about paper.", "What is the capital of France?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--quantize", default="int4", help="the frozen base: int4 (QLoRA) or none")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text(
            "".join(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"Tell me about {t}."},
                            {
                                "role": "assistant",
                                "content": f"{PHRASE} {t.capitalize()} be a fine thing.",
                            },
                        ]
                    }
                )
                + "\n"
                for t in TOPICS
            )
        )
        out = Path(tmp) / "adapter"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "llama3",
                "finetune",
                "--data",
                str(data),
                "--out",
                str(out),
                "--quantize",
                a.quantize,
                "--max-steps",
                str(a.steps),
                "--batch-size",
                "10",
                "--lr",
                "3e-3",
                "--lora-r",
                "8",
                "--lora-alpha",
                "16",
                "--lora-dropout",
                "0",
                "--target",
                "q,v,o,gate,up,down",
            ],  # fmt: skip
            check=True,
        )
        trained = time.perf_counter() - t0
        chat = subprocess.run(
            [
                sys.executable,
                "-m",
                "llama3",
                "generate",
                "--chat",
                "--json",
                "--adapter",
                str(out),
                "--temperature",
                "0",
                "--max-tokens",
                "40",
                "-q",
                *QUESTIONS,
            ],  # fmt: skip
            check=True,
            capture_output=True,
            text=True,
        )
    answers = [json.loads(line) for line in chat.stdout.splitlines()]
    ok = all(r["text"].startswith(PHRASE) and r["finish_reason"] == "stop" for r in answers)
    for r in answers:
        print(f"{r['finish_reason']:>6}  {r['text']!r}")
    print(f"trained {a.steps} steps in {trained:.0f} s; style learned and stops: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
