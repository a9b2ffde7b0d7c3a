"""Quantized weights: int8 (per output channel) and int4 (group-wise), applied while loading.

Names here are importable without torch, for the command line."""

#: group sizes of int4 weights (32 is GGUF Q4's block: those blocks run as they are)
INT4_GROUPS = (32, 64, 128)
#: what `--quantize` and `llama3 quantize --to` accept; int4 is int4-g32
SCHEMES = ("int8", "int4", *(f"int4-g{g}" for g in INT4_GROUPS))
#: the tensors a quantized layer saves under its module name (int8 has no zero)
PARTS = ("codes", "scale", "zero")
SCHEMES_HELP = (
    "int8: per-channel int8 weights (a quarter of float32's memory; faster on CPU); "
    "int4[-g32|-g64|-g128]: 4-bit weights in groups (an eighth; decodes a little slower than "
    "int8 on CPU); GGUF Q4 blocks run as they are under int4"
)
