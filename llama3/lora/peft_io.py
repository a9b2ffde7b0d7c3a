"""Adapters on disk in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys are PEFT's (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so
`peft.PeftModel.from_pretrained` on transformers' LlamaForCausalLM loads what we write and we load
what PEFT/TRL write (`adapter_model.bin` too). PEFT's q/k rows are in Hugging Face's rotate-half
order, ours in Meta's (`checkpoint.names`): lora_B of q_proj/k_proj is permuted like the base
weight's rows on the way in and out (lora_A, which acts on the input side, is not).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint.names import permute_meta_qk, unpermute_hf_qk
from ..config import ModelArgs
from ..errors import CheckpointError, InvalidRequestError
from ..model.transformer import Transformer
from .attach import adapters, attach, projection_shape
from .config import LoRAConfig, hf_module, meta_module

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)"
    r"\.lora_(A|B)(?:\.[\w-]+)?\.weight$"
)


@dataclass
class Adapter:
    """An adapter read from disk: its config and (A, B) per Meta module, in Meta's layout."""

    config: LoRAConfig
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    path: Path

    def modules(self) -> dict[str, tuple[int, float]]:
        """Meta module -> (rank, alpha), the rank read from the weights."""
        return {n: (a.shape[0], self.config.alpha_for(n)) for n, (a, _) in self.weights.items()}

    def deltas(self) -> dict[str, torch.Tensor]:
        """Meta weight name -> scale * B @ A (float32, Meta layout): what a merge adds."""
        out = {}
        for name, (r, alpha) in self.modules().items():
            a, b = self.weights[name]
            out[f"{name}.weight"] = (b.float() @ a.float()) * self.config.scale(r, alpha)
        return out


def _qk_heads(args: ModelArgs, module: str) -> int | None:
    """The head count whose rows are permuted between Meta's and HF's layout (q/k), else None."""
    if module.endswith(".wq"):
        return args.n_heads
    if module.endswith(".wk"):
        return args.kv_heads
    return None


def _missing(path: Path) -> InvalidRequestError:
    return InvalidRequestError(
        f"no LoRA adapter at {path} (expected {CONFIG} and {WEIGHTS} there)",
        "pass the folder `llama3 finetune --out` or PEFT's save_pretrained wrote",
        "adapter",
    )


def read_adapter(path: str | os.PathLike, args: ModelArgs) -> Adapter:
    """Read and check an adapter folder against the model `args` describes."""
    p = Path(path)
    if not (p / CONFIG).is_file():
        raise _missing(p)
    try:
        raw_cfg = json.loads((p / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {p / CONFIG}: {e}", "write it again") from None
    if not isinstance(raw_cfg, dict):
        raise CheckpointError(f"{p / CONFIG} is not a JSON object", "write it again")
    config = LoRAConfig.from_peft(raw_cfg, str(p / CONFIG))
    tensors = _read_tensors(p)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        module = meta_module(int(m.group(1)), m.group(2)) if m else None
        if module is None:
            raise InvalidRequestError(
                f"{p.name}: adapter tensor {key!r} is not a LoRA matrix of an attention or MLP "
                "projection",
                "only q/k/v/o/gate/up/down adapters load here (no embeddings, head or biases)",
                "adapter",
            )
        pairs.setdefault(module, {})[m.group(3)] = t
    if not pairs:
        raise InvalidRequestError(f"{p / WEIGHTS} holds no LoRA weights", "train it again")
    weights = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise InvalidRequestError(
                f"{p.name}: {hf_module(module)} has lora_{next(iter(ab))} without its pair",
                "the adapter file is incomplete; save it again",
                "adapter",
            )
        weights[module] = _checked(p, module, ab["A"], ab["B"], args)
    return Adapter(config, weights, p)


def _read_tensors(p: Path) -> dict[str, torch.Tensor]:
    if (p / WEIGHTS).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p / WEIGHTS))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {p / WEIGHTS}: {e}", "save it again") from None
    if (p / "adapter_model.bin").is_file():
        return torch.load(p / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise _missing(p)


def _checked(
    p: Path, module: str, a: torch.Tensor, b: torch.Tensor, args: ModelArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    layer = int(module.split(".")[1])
    if layer >= args.n_layers:
        raise InvalidRequestError(
            f"{p.name} adapts layer {layer} but the model has {args.n_layers} layers",
            "use the adapter with the model it was trained on",
            "adapter",
        )
    out_f, in_f = projection_shape(args, module)
    r = a.shape[0] if a.dim() == 2 else -1
    if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != (r, in_f) or tuple(b.shape) != (out_f, r):
        raise InvalidRequestError(
            f"{p.name}: {hf_module(module)} has lora_A {tuple(a.shape)} and lora_B "
            f"{tuple(b.shape)}, but this model's projection is {out_f}x{in_f} (lora_A (r, "
            f"{in_f}), lora_B ({out_f}, r))",
            "the adapter was trained on another model: use it with that base model",
            "adapter",
        )
    heads = _qk_heads(args, module)
    b = b.float()
    if heads is not None:
        b = unpermute_hf_qk(b, heads).contiguous()
    return a.float().contiguous(), b


def load_adapter(model: Transformer, path: str | os.PathLike) -> Adapter:
    """Read the adapter at `path` and attach it to `model`, unmerged (any base: float or
    quantized). Dropout is off (`model.eval()`); returns what was read."""
    adapter = read_adapter(path, model.params)
    made = attach(model, adapter.config, adapter.modules())
    with torch.no_grad():
        for name, lora in made.items():
            a, b = adapter.weights[name]
            lora.A.copy_(a)
            lora.B.copy_(b)
    model.eval()
    return adapter


def peft_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's adapter under PEFT's keys and in HF's q/k row order (exact: a permutation)."""
    out = {}
    for name, lora in adapters(model).items():
        key = f"base_model.model.{hf_module(name)}"
        b = lora.B.detach()
        heads = _qk_heads(model.params, name)
        if heads is not None:
            b = permute_meta_qk(b, heads)
        out[f"{key}.lora_A.weight"] = lora.A.detach().contiguous().cpu()
        out[f"{key}.lora_B.weight"] = b.contiguous().cpu()
    return out


def save_adapter(model: Transformer, out: str | os.PathLike, config: LoRAConfig) -> Path:
    """Write the model's adapter to folder `out` (created if needed); each file is written under a
    temporary name and renamed, so a reader never sees half a file."""
    from safetensors.torch import save_file

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    state = peft_state_dict(model)
    _atomic(d / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    text = json.dumps(config.to_peft(), indent=2) + "\n"
    _atomic(d / CONFIG, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return d


def _atomic(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
