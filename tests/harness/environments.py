"""Environments the tests run refmask in: a numpy-only interpreter, and JAX with x64 for one block."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def numpy_only_python(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A Python command line, and its environment, that sees NumPy and this checkout's refmask and
    comparisons but no other installed package: a numpy-only install."""
    site = tmp_path / "numpy-only"
    site.mkdir()
    installed = Path(np.__file__).resolve().parents[1]
    try:
        for name in ("numpy", "numpy.libs"):
            if (installed / name).exists():
                (site / name).symlink_to(installed / name)
        for package in ("refmask", "comparisons"):
            (site / package).symlink_to(ROOT / package)
    except OSError as err:  # no symlinks here (Windows without the privilege)
        pytest.skip(f"cannot symlink a numpy-only environment: {err}")
    # -S: no site-packages, so only what is linked above can be imported.
    return [sys.executable, "-S", "-m", "refmask"], {**os.environ, "PYTHONPATH": str(site)}


@contextlib.contextmanager
def jax_x64() -> Iterator[None]:
    """jax_enable_x64 on for the block, restored after (jax's own context manager)."""
    import jax

    with jax.enable_x64(True):
        yield
