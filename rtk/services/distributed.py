"""torch.distributed under ``torchrun``: which process this is, sharding, and the collectives rtk uses.

``torchrun --nproc_per_node=N -m rtk run RECIPE`` starts N copies of ``rtk run``; torchrun sets
RANK, WORLD_SIZE and LOCAL_RANK, and :func:`init` joins the process group (NCCL on CUDA, gloo
on CPU). Without those variables everything here is a no-op for a single process, so code calls
these helpers unconditionally.

How the stages split the work, so that results equal a single-process run's:

- training: every rank draws the same shuffled order and the same global batch of
  ``batch_size`` examples and trains on its slice (:func:`split_batch`); gradients are averaged
  over the global batch (:func:`all_reduce_gradients`);
- evaluation and feature extraction: whole batches of ``batch_size`` go to ranks round-robin
  (:func:`owns_batch`), so every example is attacked in the same batch, with the same seed, as in
  a single process; per-example results are summed across ranks (each row is filled by one rank);
- certification: per-example rows (rtk.evaluation.certifier.Certifier) are certified on a strided shard of
  the examples and gathered to rank 0, which summarises them.

Only rank 0 writes files and prints; the others keep quiet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rtk.errors import RtkError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RtkError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def world() -> World:
    """This process's place in the torchrun job (rank 0 of 1 when not launched by torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def init(device: torch.device | None = None) -> World:
    """Join the process group torchrun describes (idempotent); NCCL for CUDA devices, else gloo."""
    import torch.distributed as dist

    current = world()
    if not current.distributed or dist.is_initialized():
        return current
    if not dist.is_available():
        raise RtkError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process")
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(current.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def shutdown() -> None:
    """Leave the process group. A barrier first, so no rank tears down while another still sends
    (gloo aborts the process at exit when a peer vanished mid-collective)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        import torch.distributed as dist

        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Each rank of a multi-GPU job gets its own GPU (cuda:LOCAL_RANK) unless one was named."""
    w = world()
    if device.type == "cuda" and device.index is None and w.distributed:
        return torch.device("cuda", w.local_rank)
    return device


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors only."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (the tensor itself on a single process)."""
    if not world().distributed:
        return tensor
    import torch.distributed as dist

    buffer = tensor.to(_comm_device(tensor))
    dist.all_reduce(buffer)
    return buffer.to(tensor.device)


def broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    if not world().distributed:
        return tensor
    import torch.distributed as dist

    buffer = tensor.to(_comm_device(tensor)).contiguous()
    dist.broadcast(buffer, src)
    return buffer.to(tensor.device)


def broadcast_tensor(tensor: torch.Tensor | None, src: int) -> torch.Tensor:
    """Rank ``src``'s CPU tensor (float32, any shape up to 7 dimensions) on every rank; the other
    ranks pass None."""
    if not world().distributed:
        return tensor
    header = torch.zeros(8, dtype=torch.int64)
    if world().rank == src:
        header[0] = tensor.ndim
        header[1:1 + tensor.ndim] = torch.tensor(tensor.shape)
    header = broadcast(header, src)
    shape = header[1:1 + int(header[0])].tolist()
    data = tensor.float().contiguous() if world().rank == src else torch.empty(shape, dtype=torch.float32)
    return broadcast(data, src)


def gather_objects(value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (plain picklable values only:
    certificate rows, flags)."""
    w = world()
    if not w.distributed:
        return [value]
    import torch.distributed as dist

    out = [None] * w.size
    dist.all_gather_object(out, value)
    return out


def owns_batch(batch: int) -> bool:
    """Whether this rank handles batch number ``batch`` (round-robin)."""
    w = world()
    return batch % w.size == w.rank


def split_batch(n: int) -> slice:
    """This rank's contiguous slice of a global batch of ``n`` examples (the first ranks get one
    more when ``n`` does not divide evenly; a slice may be empty)."""
    w = world()
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def shard_indices(total: int) -> list[int]:
    """A strided shard of ``range(total)``: rank r takes r, r + size, ... (balances costs that
    grow along the data)."""
    w = world()
    return list(range(w.rank, total, w.size))


def all_reduce_gradients(params, local: int) -> float:
    """Make every rank's gradients the gradient of the mean loss over the global batch.

    Each rank's loss is the mean over its ``local`` examples, so its gradient is weighted by
    ``local`` and the sum divided by the global count (reduced in the same buffer). Why not
    DistributedDataParallel: DDP synchronises only gradients that flow through
    ``module.forward``; objectives here also call ``model.features`` and their own modules
    (projection heads, LwF's old head), whose gradients DDP would leave unsynchronised. One
    all-reduce of a flat buffer after backward works for any objective, at the cost of DDP's
    overlap of communication with the backward pass. A parameter without a gradient on every
    rank keeps ``grad = None`` (so optimizers skip it, as they would in a single process).
    """
    if not world().distributed:
        return
    params = list({id(p): p for p in params if p.requires_grad}.values())
    if not params:
        return
    device = params[0].device
    flat = [(p.grad.detach().float() * local).reshape(-1) if p.grad is not None
            else torch.zeros(p.numel(), device=device) for p in params]
    present = torch.tensor([p.grad is not None for p in params] + [local], dtype=torch.float32, device=device)
    buffer = all_reduce_sum(torch.cat(flat + [present]))
    offset = sum(p.numel() for p in params)
    present, total = buffer[offset:-1], float(buffer[-1])
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if present[i] > 0:
            values = (buffer[offset:offset + n] / max(total, 1.0)).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = values.clone()
            else:
                p.grad.copy_(values)
        offset += n
    return total


def sync_rng_from(src: int = 0) -> None:
    """Give every rank rank ``src``'s torch generator states (CPU and the current CUDA device)."""
    if not world().distributed:
        return
    torch.set_rng_state(broadcast(torch.get_rng_state(), src))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(broadcast(torch.cuda.get_rng_state(), src))


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (as DDP does at construction)."""
    if not world().distributed:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tensor.copy_(broadcast(tensor.detach(), src))


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so every rank
    keeps the same model after training (each rank's BN saw only its slice of the batch)."""
    if not world().distributed:
        return
    size = world().size
    for buffer in module.buffers():
        if buffer.is_floating_point():
            buffer.copy_(all_reduce_sum(buffer.detach()) / size)
