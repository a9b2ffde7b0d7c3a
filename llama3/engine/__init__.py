"""The continuous-batching engine: paged KV cache bookkeeping, scheduling, and (later) the runner.

`config` (EngineConfig), `sequence` (one request's tokens and state), `block_manager` (the paged
KV block pool with prefix caching) and `scheduler` (which tokens run each step) are pure Python over
ints and lists: no torch, no model, so they are unit-tested exhaustively on their own. The tensor
runner and the engine that glues schedule -> run -> postprocess live beside them.
"""
