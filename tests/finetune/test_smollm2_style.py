"""The learning is visible: a few QLoRA steps on the real SmolLM2 (int4, its own Q4_1 blocks) over
30 examples that all answer in one fixed style; greedy chat on questions it never saw then answers
in that style and stops by itself (the learned `<|im_end|>`). The session's model is given back
unchanged afterwards."""

from __future__ import annotations

import torch

from llama3 import SamplingParams
from llama3.finetune import Renderer, TrainConfig, Trainer
from llama3.lora import LoRAConfig, detach

PHRASE = "Ahoy matey!"
#: a short system turn in place of the template's default one: shorter examples, quicker steps
SYSTEM = {"role": "system", "content": "Be brief."}
TOPICS = (
    "the sky", "cats", "the sea", "bread", "music", "rain", "trees", "the moon", "coffee", "books",
    "snow", "bikes", "the sun", "stars", "rivers", "apples", "dogs", "clocks", "winter", "gardens",
    "mountains", "tea", "birds", "fire", "chess", "maps", "ships", "bees", "glass", "wind",
)  # fmt: skip


def test_smollm2_learns_a_style_and_stops(smollm2, tmp_path):
    model = smollm2.model
    probe = torch.tensor([smollm2.tokenizer.encode_prompt("Hello there")])
    before = model(probe)
    r = Renderer(smollm2.tokenizer, smollm2.formatter)
    train = [
        r.example(
            {
                "messages": [
                    SYSTEM,
                    {"role": "user", "content": f"Tell me about {t}."},
                    {"role": "assistant", "content": f"{PHRASE} {t.capitalize()} be a fine thing."},
                ]
            },
            i,
        )
        for i, t in enumerate(TOPICS)
    ]
    cfg = TrainConfig(lr=3e-3, max_steps=4, batch_size=8, seed=0)
    lora = LoRAConfig(r=8, alpha=16, dropout=0.0, targets=("wq", "wv", "wo", "w1", "w2", "w3"))
    try:
        Trainer(model, lora, train, cfg, tmp_path, log=lambda s: None).run()
        greedy = SamplingParams(temperature=0.0, max_tokens=40)
        for q in ("Tell me about horses.", "Tell me about paper."):
            res = smollm2.chat([[SYSTEM, {"role": "user", "content": q}]], greedy)[0]
            assert res.text.startswith(PHRASE), res.text
            assert res.finish_reason == "stop", res.text
    finally:
        detach(model)
    assert torch.equal(model(probe), before)
