"""Which process of a run this is, how a batch is split over the processes, and what they agree on.
No Django.

A run on several processes is started by ``torch.distributed.run`` (``training.ml.launch``), which
gives each process ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a run in one process has none of them
and is rank 0 of 1, so every function here is a no-op there and the single-process path is unchanged.

A run's ``batch_size`` means the same whatever the number of processes: it is the batch of one
optimiser step over all of them (each process takes ``batch_size / processes`` rows). With data
parallelism the gradient is averaged over the processes, so N processes with ``batch_size / N`` rows
each take the same steps, with the same learning-rate schedule, as one process with ``batch_size``,
and a run's config needs no change when ``TRAINING_PROCESSES`` does. They even see the same rows:
accelerate hands each process its share of the batches one process would have drawn (measured: 2 CPU
processes matched one to float32 rounding). Only an epoch's last, partial batch differs: accelerate
fills every process's share up with the epoch's first rows.
"""

from __future__ import annotations

import os

# What torch.distributed.run gives each process of a run, and what MPI launchers give theirs
# (accelerate reads PMI_SIZE and OMPI_COMM_WORLD_SIZE on a CPU). Found in a worker's own environment
# (a cluster's job launcher, Kubeflow's PyTorchJob say, gives every pod them), they would make a run
# trained in the worker's own process take itself for one rank of several: a share of each batch,
# no checkpoint saved off rank 0, transformers waiting for peers that never come.
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "PMI_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
)
# torchrun's own defaults come from PET_<OPTION> variables (PET_NNODES, PET_NODE_RANK, ...), which
# Kubeflow sets too: the worker starts torchrun without them.
LAUNCHER_PREFIXES = ("PET_", "TORCHELASTIC_")


def clear_inherited_ranks() -> list[str]:
    """Remove the rank variables from this process's environment (a worker's, before it trains a run
    in its own process: only ``training.ml.launch``'s torchrun gives ranks); returns the names
    removed."""
    return [name for name in RANK_VARIABLES if os.environ.pop(name, None) is not None]


# Fewest rows one process must get per step, by kind: KTO estimates its KL term by pairing each
# completion with another prompt of the same per-process batch (TRL refuses a batch of 1).
MIN_ROWS_PER_PROCESS = {"kto": 2}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the one process that reports progress and saves the checkpoint."""
    return rank() == 0


def per_process_batch_size(batch_size: int, processes: int | None = None) -> int:
    """Rows each process takes per step so that the step's batch over all of them is ``batch_size``."""
    processes = world_size() if processes is None else processes
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over {processes} processes; use a multiple of {processes}."
        )
    return batch_size // processes


def usable_processes(kind: str, batch_size: int, requested: int) -> tuple[int, str | None]:
    """The most processes, up to ``requested``, that split ``batch_size`` evenly with at least
    ``MIN_ROWS_PER_PROCESS`` rows each; and, when that is fewer than requested, a line that says why
    and what would use them all. Never fails: at worst the run trains in one process."""
    least = MIN_ROWS_PER_PROCESS.get(kind, 1)
    fits = [p for p in range(1, requested + 1) if batch_size % p == 0 and batch_size // p >= least]
    processes = max(fits, default=1)
    if processes == requested:
        return processes, None
    rule = f"at least {least} rows a process for {kind}, " if least > 1 else ""
    return processes, (
        f"training in {processes} of {requested} processes: batch_size {batch_size} must split evenly over"
        f" them ({rule}each step's batch stays batch_size); a batch_size that is a multiple of"
        f" {requested * least} would use all {requested}"
    )


def plan_processes(kind: str, batch_size: int, requested: int, *, gpus: int | None = None) -> tuple[int, list[str]]:
    """How many processes a run of ``kind`` trains in when ``requested`` (``TRAINING_PROCESSES``) may:
    no more than the node's ``gpus`` when it has any (one process a GPU; counted when not given), and
    no more than split ``batch_size`` evenly (``usable_processes``). Also the lines for the run's log
    that say what was cut and why, and how the processes will train."""
    lines = []
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and requested > gpus:
        lines.append(f"TRAINING_PROCESSES is {requested} but this node has {gpus} GPUs: one process a GPU")
        requested = gpus
    processes, why = usable_processes(kind, batch_size, requested)
    if why:
        lines.append(why)
    if processes > 1:
        backend = "NCCL, one GPU each" if gpus else "gloo on the CPU"
        lines.append(f"training in {processes} processes ({backend}), {batch_size // processes} rows each a step")
    return processes, lines


def decided_by_main_process(flag: bool) -> bool:
    """Rank 0's ``flag``, in every process (a broadcast; every process must call this at the same
    point). In one process, ``flag`` itself.

    This is how a stop request reaches all processes at the same step: if one stopped while another
    went on, the other would wait forever in the next step's gradient all-reduce."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag  # no process group yet, so no collective any process could be left waiting in
    on_gpu = dist.get_backend() == "nccl"  # NCCL only moves tensors that live on the GPU
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    decision = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())
