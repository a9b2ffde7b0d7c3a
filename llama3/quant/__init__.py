"""Quantized weights: int8 (per output channel) and int4 (group-wise), applied while loading.

Names here are importable without torch, for the command line."""

#: group sizes of int4 weights (32 is GGUF Q4's block: those blocks run as they are)
INT4_GROUPS = (32, 64, 128)
#: what `--quantize` and `llama3 quantize --to` accept; int4 is int4-g32
SCHEMES = ("int8", "int4", *(f"int4-g{g}" for g in INT4_GROUPS))
#: what a load's `--quantize` accepts: a scheme, or "none" for float weights
LOAD_CHOICES = ("none", *SCHEMES)
#: the tensors a quantized layer saves under its module name (int8 has no zero)
PARTS = ("codes", "scale", "zero")
SCHEMES_HELP = (
    "int8: per-channel int8 weights (a quarter of float32's memory; faster on CPU); "
    "int4[-g32|-g64|-g128]: 4-bit weights in groups (an eighth; decodes a little slower than "
    "int8 on CPU); none: float weights. Default: a quantized GGUF runs as its quant (Q4_0/"
    "Q4_1/Q4_K blocks as int4, others as int8), float checkpoints as float unless they would not "
    "fit in memory"
)
