"""A tiny Llama 3 checkpoint built to answer one fixed text, whatever the prompt.

Every layer's output projections are zero, so the residual stream is the token's embedding and
the model is a bigram table: the next token depends only on the current one. The chain
`after -> answer[0] -> ... -> answer[-1] -> end` gets orthogonal embeddings and an lm_head that
points each link at the next, so greedy decoding (and any temperature up to ~1, the margin is
large) continues a prompt ending in `after` with exactly `answer` and then `end`. Used where a
test needs a real model whose output is known: tool calls, Llama Guard verdicts.
"""

from __future__ import annotations

from pathlib import Path

import factory
import torch

MARGIN = 60.0  # logit of the forced token above every other one


def forced_answer_model(
    out: Path,
    after: int,
    answer: list[int],
    end: int,
    variant="3.1",
    second: tuple[list[int], int] | None = None,
    margin: float = MARGIN,
) -> Path:
    """`second` = (tokens, end): another chain, reached only when a request's logit_bias picks
    its first token (a tool loop's final answer after the call); a smaller `margin` lets a
    logit_bias of -100 overrule the chain."""
    chain = [after, *answer, *(second[0] if second else [])]
    if len(set(chain)) != len(chain) or end in chain:
        raise ValueError(f"a bigram model needs distinct tokens in the chain, got {chain} -> {end}")
    if len(chain) > factory.DIM:
        raise ValueError(f"at most {factory.DIM} chain tokens, got {len(chain)}")
    model = factory.hf_model(variant)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        basis = torch.eye(factory.DIM)
        for i, tok in enumerate(chain):
            # RMS 1, so the final norm leaves it as it is and the forced logit is MARGIN
            emb[tok] = basis[i] * factory.DIM**0.5
        nxt = [*answer, end]
        for i, tok in enumerate(nxt):
            head[tok] = basis[i] * margin
        if second is not None:  # its links sit after the first chain's in the basis
            two, two_end = second
            for i, tok in enumerate([*two[1:], two_end]):
                head[tok] = basis[len(answer) + 1 + i] * margin
        # other rows of the head stay random (~N(0, 0.08)): their logits are O(1) on the chain
    return factory.write_hf(model, out, variant)


#: what `tool_call_model` answers: a Llama 3.1 built-in call, and (under `final_answer_bias`)
#: the answer after the tool result
TOOL_CALL_TEXT = 'brave_search.call(query="Paris weather")'
TOOL_FINAL_TEXT = "It is sunny in Paris today."


def tool_call_model(out: Path) -> Path:
    """`<|python_tag|>brave_search.call(query="Paris weather")<|eom_id|>` after any chat prompt."""
    from llama3.tokenizer import Tokenizer

    tok = Tokenizer()
    special = tok.special_tokens
    return forced_answer_model(
        out,
        271,  # "\n\n", the last token of the assistant header
        [special["<|python_tag|>"], *tok.encode(TOOL_CALL_TEXT, bos=False, eos=False)],
        special["<|eom_id|>"],
        second=(tok.encode(TOOL_FINAL_TEXT, bos=False, eos=False), special["<|eot_id|>"]),
        margin=7.5,  # forced logits ~60 (x sqrt(dim) after the norm): a bias of -100 wins
    )


def final_answer_bias() -> dict[int, float]:
    """Leave the call chain for the answer chain (the bigram model cannot read the result)."""
    from llama3.tokenizer import Tokenizer

    tok = Tokenizer()
    first = tok.encode(TOOL_FINAL_TEXT, bos=False, eos=False)[0]
    return {first: 30.0, tok.special_tokens["<|python_tag|>"]: -100.0}
