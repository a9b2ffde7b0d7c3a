"""`llama3 bench`: load, prefill, decode, time to first token and peak memory, measured for this
engine and, in the same run, for llama.cpp and transformers on the same weights.

Every engine runs in its own worker process (`python -m llama3.bench.worker`), so each one's peak
RSS is its own and no engine warms another's caches; all get the same token ids and thread count.
"""
