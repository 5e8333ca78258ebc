"""The CPU kernels and thread count training and evaluation run on, the same on any x86-64 machine.

torch's ATen loops and MKL's GEMMs are picked by the CPU's widest vector unit, and work is split
by the thread count; each choice adds in another order, and the GNN's training carries the last
bits into other weights. The T4 fold of leave one GPU out, GNN seed 0, read 9.1% on an AVX-512
machine as it came, 6.9% with ATen's AVX2 loops, 9.3% with MKL's, 13.7% with both, and 14.3%
with both on one thread (README, "Numerics"): another machine, another figure. `pin` fixes AVX2,
which x86-64 servers have had since 2013, and 2 threads, the cores CI and this project's machines
have. ATen fixes its choice at the process's first torch operation, which importing
torch_geometric runs: a command pins before it imports the learned models.

This module imports torch alone (which runs no operation), so that it can be imported first.
"""
from __future__ import annotations

import os
import platform

import torch

KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
THREADS = 2


def pin() -> bool:
    """Run torch on `KERNELS` (where the environment names none of its own) and `THREADS`
    threads. True where torch runs those kernels; False where torch ran before (its choice was
    made), the CPU lacks them, or the machine is not x86-64 (whose kernels are its own): a
    command then prints `unpinned()` beside its results."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    for key, value in KERNELS.items():
        os.environ.setdefault(key, value)
    torch.set_num_threads(THREADS)
    return torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()


def unpinned() -> str:
    """The note a command prints where `pin` could not hold."""
    return (f"note: torch ran on {described()}, not {KERNELS['ATEN_CPU_CAPABILITY'].upper()} kernels on "
            f"{THREADS} threads: trained weights and figures may differ from other machines' "
            "(costmodel/models/numerics.py)")


def described() -> str:
    """What a training ran on, as a checkpoint and a report record it."""
    return (f"{platform.machine()}, torch {torch.backends.cpu.get_cpu_capability()}, "
            f"MKL_CBWR {os.environ.get('MKL_CBWR', 'unset')}, {torch.get_num_threads()} threads")
