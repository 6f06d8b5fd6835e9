"""Many processes under ``torchrun``: the world, averaged task gradients, imitation split by target.

``torchrun --nproc_per_node N -m moil.harness.cli train …`` (or ``torchrun …
$(which moil) train …``) runs one ``moil train`` per process; :func:`moil.train.train`
detects the launch, joins the process group and, for the run, averages the teacher's
gradients over ranks (:mod:`~moil.distributed.gradients`) and gives each rank its own
targets' momentum state and students (:mod:`~moil.distributed.sharding`).
"""

from moil.distributed.gradients import all_reduce_mean, check_mean_loss
from moil.distributed.sharding import (
    collective_update,
    full_state,
    gather_parts,
    local_state,
    owned_targets,
    units,
)
from moil.distributed.world import (
    SINGLE,
    World,
    active,
    agree,
    barrier,
    broadcast,
    check_batch_size,
    check_plain_tensors,
    current,
    from_env,
    init_world,
    on_main,
    shard_batch,
)

__all__ = [
    "SINGLE",
    "World",
    "active",
    "agree",
    "all_reduce_mean",
    "barrier",
    "broadcast",
    "check_batch_size",
    "check_mean_loss",
    "check_plain_tensors",
    "collective_update",
    "current",
    "from_env",
    "full_state",
    "gather_parts",
    "init_world",
    "local_state",
    "on_main",
    "owned_targets",
    "shard_batch",
    "units",
]
