"""Quantized weight formats: decoding llama.cpp GGUF blocks (`gguf_blocks`) into PyTorch tensors."""
