"""Data-parallel sweeps: the ranks of a ``torchrun`` job, their process group, and the launch.

A data-parallel sweep runs one process per GPU (or several on the CPU); each loads the whole
model and runs its own share of the planned batches (:func:`mechintro.experiments.sweeps.run_sweep`
reads the ranks from here). The processes exchange only small Python objects: the pending
trials that rank 0 read from the results folder, each rank's memory plan, and barriers. So
the process group is always ``gloo``, on GPUs too: no tensor crosses processes, and gloo needs
no per-rank CUDA device set up before it starts. Each rank's model goes on ``cuda:LOCAL_RANK``
(:func:`rank_device`).

Launch with ``torchrun`` (:func:`torchrun_command` builds the line), which sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` and tears the whole job down if one rank dies::

    torchrun --standalone --nproc-per-node 2 -m mechintro.app.cli sweep --config c.toml --out runs/a

or ``mechintro sweep --nproc 2 ...``, which runs that line itself. In a script of your own::

    from mechintro.experiments.distributed import init_from_env, rank_device
    ranks = init_from_env()                       # a no-op outside torchrun
    model = load_model(name, device=rank_device("cuda", ranks))
    run_sweep(model, spec, "runs/a")              # each rank runs its share
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a rank waits at a barrier: rank 0 extracts the concept vectors (and the slowest
#: rank finishes its last batch) while the others wait.
TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its host.

    With ``world_size == 1`` (no process group) every collective is the identity.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj``, on every rank (a picklable object)."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th, starting at ``rank`` (round robin)."""
        return list(items[self.rank :: self.world_size])


def current() -> Ranks:
    """The ranks of the initialised ``torch.distributed`` group, else a world of one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    rank = dist.get_rank()
    return Ranks(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def init_from_env(timeout: timedelta = TIMEOUT) -> Ranks:
    """Join the job that ``torchrun`` started (``WORLD_SIZE`` > 1 in the environment).

    Initialises a gloo process group from the environment (``MASTER_ADDR``, ``MASTER_PORT``,
    ``RANK``, ``WORLD_SIZE``), once; without ``WORLD_SIZE`` (a plain run) it does nothing and
    returns a world of one.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timeout)
    return current()


def shutdown() -> None:
    """Leave the process group, if one was initialised (at the end of a rank's work).

    Every rank waits for the others first: a rank that left while another still worked
    (rank 0 writes the results) closed its gloo connections under the other's feet, which
    once aborted that rank at exit (SIGABRT, "terminate called without an active exception")
    after its work was done.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_device(device: str, ranks: Ranks) -> str:
    """The device of this rank's model: ``cuda`` (or ``cuda:N``) → ``cuda:LOCAL_RANK`` in a job
    of several ranks; any other device unchanged (several CPU ranks share the CPU)."""
    if ranks.world_size == 1 or not device.startswith("cuda"):
        return device
    import torch

    n = torch.cuda.device_count()
    if ranks.local_rank >= n:
        raise RuntimeError(
            f"rank {ranks.rank} has local rank {ranks.local_rank} but this host has {n} CUDA "
            "devices: start at most one process per GPU (--nproc)"
        )
    torch.cuda.set_device(ranks.local_rank)
    return f"cuda:{ranks.local_rank}"


def torchrun_command(args: Sequence[str], nproc: int) -> list[str]:
    """The ``torchrun`` line that runs ``mechintro ARGS`` as ``nproc`` ranks on this host."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mechintro.app.cli",
        *args,
    ]


def launch(args: Sequence[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run ``mechintro ARGS`` as ``nproc`` ranks through torchrun; its exit status.

    Unless ``OMP_NUM_THREADS`` is set, each rank gets the CPU cores over the ranks (torchrun
    alone would give each one thread, with a warning).
    """
    environ = dict(os.environ if env is None else env)
    environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(torchrun_command(args, nproc), env=environ, check=False).returncode


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` and ``flag=VALUE``."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip or a == flag or a.startswith(flag + "="):
            skip = a == flag
            continue
        out.append(a)
    return out
