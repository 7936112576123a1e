"""The modes of `refmask bench`: the shapes and repeat counts of full, --quick and --smoke."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """The shapes and repeat counts of one mode."""

    name: str
    softmax: tuple[int, int, int, int]  # (B, H, T, S)
    attention: tuple[int, int, int, int, int]  # (B, H, T, S, D)
    small: tuple[int, int, int, int]
    memory_len: int  # T = S of case 4, (1, 1, T, S, 64)
    masks: tuple[int, int]  # (B, T) of case 5, masks broadcast to (B, 1, T, T)
    repeats: int  # cases 1, 3 and 5; case 2 uses (repeats + 1) // 2
    calls: int  # calls per timed loop in case 3


# Full mode: the shapes docs/benchmarks.md reports; the other modes print where theirs are smaller.
FULL = Sizes("full", (8, 8, 512, 512), (4, 8, 1024, 1024, 64), (1, 1, 8, 8), 8192, (8, 4096), 11, 2000)
QUICK = Sizes("quick", (8, 8, 512, 512), (2, 8, 512, 512, 64), (1, 1, 8, 8), 8192, (8, 2048), 5, 500)
SMOKE = Sizes("smoke", (2, 2, 32, 32), (1, 2, 32, 32, 16), (1, 1, 8, 8), 256, (2, 128), 1, 3)
