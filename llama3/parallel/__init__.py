"""Tensor parallelism over torch.distributed (torchrun; gloo on CPU, NCCL on CUDA).

`plan` says which rows and columns each rank holds (Meta's layout), `group` joins the run and
runs the collectives, `driver` lets rank 0 drive the other ranks call by call, and `launch` runs
a CLI verb that way. A model becomes one rank's shard through `loader.load(...,
tensor_parallel=group.init())`.
"""

from .group import TensorParallel, current, init, shutdown, world_size_from_env
from .plan import ShardPlan

__all__ = ["ShardPlan", "TensorParallel", "current", "init", "shutdown", "world_size_from_env"]
