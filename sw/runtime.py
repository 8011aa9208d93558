"""Where training runs: the torch device (``--device auto|cpu|cuda[:N]|mps``), bf16 autocast, and the
data-parallel world when the process was started by ``torchrun`` (issue 14).

Only the float training and the float accuracy move; the integer fold, the export and the golden model stay
on the CPU in integer arithmetic, so a model file does not depend on where it was trained.

Data-parallel training: ``torchrun --nproc-per-node N $(which qpsnn) train ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; `Runtime.start` joins the process group (NCCL on CUDA, Gloo otherwise). Each
rank takes ``batch_size / N`` images of every global batch (a `DistributedSampler` with the run's seed, the
same order as one process), gradients are averaged by `DistributedDataParallel`, BatchNorm is per rank
(docs/DESIGN.md says why), SVS counts are summed over the ranks, and rank 0 alone writes files.
"""
from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import QpsnnError
from .options import DEVICE_PATTERN

# How long a rank waits in a collective: the others wait in `Runtime.stop` while rank 0 exports and evaluates,
# which on a big test set outlasts the 30-minute default.
GROUP_TIMEOUT = timedelta(hours=4)


def resolve_device(text: str, local_rank: int = 0) -> torch.device:
    """The torch device ``text`` names, refused in one line when it is not there. ``auto`` is CUDA when
    present (the rank's own GPU under torchrun), else the CPU; ``cuda`` under torchrun is ``cuda:LOCAL_RANK``."""
    if not DEVICE_PATTERN.fullmatch(text or ""):
        raise QpsnnError(f"--device {text!r}: expected auto, cpu, cuda, cuda:N or mps")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise QpsnnError(f"--device {text}: CUDA is not available ({why}); use --device cpu or auto")
        index = int(text[5:]) if ":" in text else local_rank
        if index >= torch.cuda.device_count():
            raise QpsnnError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
        return torch.device("cuda", index)
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QpsnnError("--device mps: the Apple MPS backend is not available here; use --device cpu or auto")
    return torch.device(text)


@dataclass
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def start(cls, device: str = "auto", bf16: bool = False) -> "Runtime":
        """The runtime of this process: the device checked, and under torchrun the process group joined."""
        world = _env_int("WORLD_SIZE", 1)
        rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        rt = cls(resolve_device(device, local_rank), bf16, rank, world, local_rank)
        if bf16 and not rt.cuda:
            raise QpsnnError(f"--bf16 needs a CUDA device (the run is on {rt.device})")
        if rt.cuda:
            torch.cuda.set_device(rt.device)
        if rt.distributed and not dist.is_initialized():
            backend = "nccl" if rt.cuda else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=GROUP_TIMEOUT,
                                    device_id=rt.device if rt.cuda else None)
        return rt

    def stop(self, together: bool = True) -> None:
        """Leave the process group. ``together``: every rank waits here until rank 0 has exported and
        evaluated, with the DDP wrappers freed first. A rank that tore its Gloo group down alone while rank 0
        still held its own could abort in Gloo's C++ threads at exit (seen once in CI as SIGABRT, "terminate
        called without an active exception"). After an error the others may be inside a collective, so a
        failing rank leaves alone and torchrun stops the rest."""
        if self.distributed and dist.is_initialized():
            gc.collect()  # a DDP reducer still holding the group would outlive destroy_process_group
            if together:
                try:
                    dist.barrier()
                except RuntimeError:  # rank 0 failed after training and has left; it reports why
                    if self.is_main:
                        raise
            dist.destroy_process_group()

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 and self.cuda else nullcontext()

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of a global batch; refused when it does not split evenly or leaves under 2 images
        (BatchNorm needs two)."""
        if batch_size % self.world_size or batch_size // self.world_size < 2:
            raise QpsnnError(f"--batch-size {batch_size} (the global batch) must be a multiple of the "
                             f"{self.world_size} processes with at least 2 images each")
        return batch_size // self.world_size

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (itself in one process)."""
        if self.distributed:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            return moved.to(tensor.device)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> dict:
        """What the training JSON and the model file's provenance record."""
        return {"device": str(self.device), "world_size": self.world_size, "bf16": self.bf16}


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise QpsnnError(f"environment {name}={text!r} is not an integer (set by torchrun)") from None
