"""What an adapter adapts: `LoRAConfig` (rank, alpha, dropout, targets, rsLoRA) and the target
names, read from and written to PEFT's `adapter_config.json`.

Targets are kept under Meta's projection names (wq wk wv wo w1 w2 w3). Users and PEFT configs may
also say q_proj ... down_proj (Hugging Face), q k v o gate up down, or "all-linear". PEFT's
`target_modules` may be a list (module-name suffixes) or one regular expression over module names;
`layers_to_transform`, `rank_pattern` and `alpha_pattern` are honoured. Features this engine does
not run (DoRA, LoRA biases, `modules_to_save`, ...) are refused with an error naming them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError

#: Meta projection name -> (parent module, Hugging Face module path inside a layer)
PROJECTIONS = {
    "wq": ("attention", "self_attn.q_proj"),
    "wk": ("attention", "self_attn.k_proj"),
    "wv": ("attention", "self_attn.v_proj"),
    "wo": ("attention", "self_attn.o_proj"),
    "w1": ("feed_forward", "mlp.gate_proj"),
    "w2": ("feed_forward", "mlp.down_proj"),
    "w3": ("feed_forward", "mlp.up_proj"),
}
_ALIASES = {
    **{m: m for m in PROJECTIONS},
    **{hf.split(".")[1]: m for m, (_, hf) in PROJECTIONS.items()},
    "q": "wq",
    "k": "wk",
    "v": "wv",
    "o": "wo",
    "gate": "w1",
    "down": "w2",
    "up": "w3",
}
_HF_TO_META = {hf: m for m, (_, hf) in PROJECTIONS.items()}
#: adapter_config.json keys whose non-default values this engine cannot honour
_UNSUPPORTED = {
    "use_dora": (False, None),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "modules_to_save": (None, []),
    "fan_in_fan_out": (False, None),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}),
    "layer_replication": (None, []),
    "use_qalora": (False, None),
    "alora_invocation_tokens": (None, []),
}
#: PEFT inits that rewrite the base model's weights (the adapter needs that modified base)
_BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda", "eva")


def parse_targets(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """ "q,v" / ["q_proj", "v_proj"] / "all-linear" -> Meta names in a fixed order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: set[str] = set()
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item in ("all", "all-linear"):
            out.update(PROJECTIONS)
        elif item in _ALIASES:
            out.add(_ALIASES[item])
        else:
            raise InvalidRequestError(
                f"unknown LoRA target {item!r}",
                "use projection names: q,k,v,o,gate,up,down (or wq..w3, q_proj..down_proj, "
                "all-linear)",
                "target",
            )
    if not out:
        raise InvalidRequestError("no LoRA target given", "pass e.g. --target q,k,v,o", "target")
    return tuple(m for m in PROJECTIONS if m in out)


def hf_module(meta_module: str) -> str:
    """ "layers.3.attention.wq" -> "model.layers.3.self_attn.q_proj"."""
    _, i, _, proj = meta_module.split(".")
    return f"model.layers.{i}.{PROJECTIONS[proj][1]}"


def meta_module(layer: int, hf_suffix: str) -> str | None:
    """(3, "self_attn.q_proj") -> "layers.3.attention.wq"; None for a module we do not adapt."""
    proj = _HF_TO_META.get(hf_suffix)
    return None if proj is None else f"layers.{layer}.{PROJECTIONS[proj][0]}.{proj}"


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")
    #: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r
    rslora: bool = False
    #: the layer indices adapted (None: all)
    layers: tuple[int, ...] | None = None
    #: PEFT's per-module overrides: regex key -> rank / alpha
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    #: PEFT's target_modules when it was one regular expression (matched on HF module names)
    target_regex: str | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise InvalidRequestError(f"LoRA rank must be 1 or more, got {self.r}", "--lora-r 16")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequestError(
                f"LoRA dropout must be in [0, 1), got {self.dropout}", "--lora-dropout 0.05"
            )
        if self.alpha <= 0:
            raise InvalidRequestError(
                f"LoRA alpha must be positive, got {self.alpha}", "--lora-alpha 32"
            )

    def modules(self, n_layers: int) -> dict[str, tuple[int, float]]:
        """Meta module name -> (rank, alpha) for every projection this config adapts."""
        out = {}
        for i in range(n_layers):
            if self.layers is not None and i not in self.layers:
                continue
            for proj in PROJECTIONS:
                name = f"layers.{i}.{PROJECTIONS[proj][0]}.{proj}"
                hf = hf_module(name)
                if self.target_regex is not None:
                    if not re.fullmatch(self.target_regex, hf):
                        continue
                elif proj not in self.targets:
                    continue
                r = _pattern(self.rank_pattern, hf, self.r)
                out[name] = (int(r), self.alpha_for(name))
        return out

    def alpha_for(self, module: str) -> float:
        """The alpha of Meta module `module` (PEFT's `alpha_pattern` applied)."""
        return float(_pattern(self.alpha_pattern, hf_module(module), self.alpha))

    def scale(self, r: int, alpha: float) -> float:
        return alpha / (math.sqrt(r) if self.rslora else r)

    # ---- PEFT's adapter_config.json ---------------------------------------------------------------
    def to_peft(self) -> dict[str, Any]:
        targets = (
            self.target_regex
            if self.target_regex is not None
            else sorted(PROJECTIONS[m][1].split(".")[1] for m in self.targets)
        )
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "use_rslora": self.rslora,
            "layers_to_transform": list(self.layers) if self.layers is not None else None,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "bias": "none",
            "use_dora": False,
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
            "revision": None,
        }

    @classmethod
    def from_peft(cls, cfg: dict[str, Any], where: str) -> LoRAConfig:
        def bad(what: str, fix: str) -> InvalidRequestError:
            return InvalidRequestError(f"{where}: {what}", fix, "adapter")

        if cfg.get("peft_type", "LORA") != "LORA":
            raise bad(f"peft_type is {cfg.get('peft_type')!r}", "only LoRA adapters load here")
        for key, defaults in _UNSUPPORTED.items():
            if key in cfg and cfg[key] not in defaults:
                raise bad(f"{key}={cfg[key]!r} is not supported", f"train without {key}")
        init = cfg.get("init_lora_weights", True)
        if isinstance(init, str) and init.split("_")[0].lower() in _BASE_CHANGING_INITS:
            raise bad(
                f"init_lora_weights={init!r} changes the base weights themselves",
                "convert it to a plain LoRA adapter with PEFT first "
                "(save_pretrained(..., path_initial_model_for_weight_conversion=...))",
            )
        tm = cfg.get("target_modules")
        regex, targets = None, ("wq", "wk", "wv", "wo")
        if isinstance(tm, str) and tm != "all-linear":
            regex = tm
        elif tm:
            names = [tm] if isinstance(tm, str) else [t.split(".")[-1] for t in tm]
            try:
                targets = parse_targets(names)
            except InvalidRequestError as e:
                raise bad(e.message, "only attention and MLP projections can be adapted") from None
        layers = cfg.get("layers_to_transform")
        if isinstance(layers, int):
            layers = [layers]
        try:
            return cls(
                r=int(cfg.get("r", 8)),
                alpha=float(cfg.get("lora_alpha", 8)),
                dropout=float(cfg.get("lora_dropout") or 0.0),
                targets=targets,
                rslora=bool(cfg.get("use_rslora", False)),
                layers=tuple(layers) if layers is not None else None,
                rank_pattern=dict(cfg.get("rank_pattern") or {}),
                alpha_pattern=dict(cfg.get("alpha_pattern") or {}),
                target_regex=regex,
                base_model=cfg.get("base_model_name_or_path"),
            )
        except (TypeError, ValueError) as e:
            raise bad(f"invalid adapter_config.json: {e}", "write it with PEFT or llama3") from None


def _pattern(patterns: dict[str, Any], hf_name: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", hf_name):
            return value
    return default
