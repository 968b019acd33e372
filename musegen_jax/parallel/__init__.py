"""Parallelism: the device mesh and shardings (jit, the default), pmap, the
reductions a train step makes, and multi-process start-up.

- `sharding`: the (data, fsdp) mesh, state and batch shardings, batch placement.
- `reduce`: `Reducer`, through which a task's step sums and averages over
  devices without naming a parallel mode (the identity under jit).
- `pmap`: the replicated step, its `AxisReducer` and device placement.
- `distributed`: joining several processes (`initialize_distributed`).

The names below are the ones the rest of the package uses.
"""

from musegen_jax.parallel.distributed import (DISTRIBUTED_MODES, describe_processes,
                                              detect_cluster, initialize_distributed)
from musegen_jax.parallel.pmap import (AXIS as PMAP_AXIS, AxisReducer, device_batch,
                                       replicate, unreplicate)
from musegen_jax.parallel.reduce import IDENTITY, Reducer
from musegen_jax.parallel.sharding import (BATCH_AXES, DATA_AXIS, FSDP_AXIS,
                                           PARALLELISM_MODES, axis_rules,
                                           batch_sharding, check_parallelism,
                                           create_mesh, global_batch, mesh_shape,
                                           per_process_batch_size, replicated,
                                           shard_batch, state_shardings,
                                           tracing_over)
