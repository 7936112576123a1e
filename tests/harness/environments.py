"""Environments the tests run refmask in: XLA's flags for the suite, a numpy-only interpreter, and JAX
with x64 for one block."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

# The device the cross-backend variants run on: unset or "cpu", the CPU; "cuda" or "cuda:N", that GPU
# (harness/jax_variants.py and harness/torch_variants.py read it).
DEVICE_ENV = "REFMASK_TEST_DEVICE"
# XLA_FLAGS as the suite was started with, before configure_xla added to them (kept in the environment,
# so that pytest-xdist's workers and the tests' subprocesses see it too).
GIVEN_XLA_FLAGS = "REFMASK_TEST_GIVEN_XLA_FLAGS"
# "default" runs the suite's JAX with XLA's default compiler passes (see configure_xla).
XLA_MODE = "REFMASK_TEST_XLA"

# The suite compiles a program or more for each of some thousand small problems that then run in
# microseconds, so XLA's CPU compiler, not the arithmetic, is what its JAX tests spend; without its
# optimisation passes and fusion emitters it compiles in about half the time. What is compared with the
# oracle is still compiled XLA code, held to the same tolerances; the matrix this way still equals the
# committed one (recorded at XLA's defaults), and test_jax_at_xla_defaults.py checks the JAX backend
# compiled as users compile it (xla_defaults_env). XLA aborts on a flag it does not know, so they are
# given only to the jaxlib releases that have them.
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
FAST_COMPILE_JAXLIB = (0, 6)


def _jaxlib_has_fast_compile_flags() -> bool:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return release >= FAST_COMPILE_JAXLIB


def configure_xla() -> None:
    """Set XLA_FLAGS for the suite; call before jax is imported (conftest.py does).

    Four host devices let the JAX sharding tests run on CPU. Under pytest-xdist (one worker per core),
    XLA's own CPU thread pool is off: a pool per worker would oversubscribe the cores, and small ops
    then wait for descheduled threads. On the CPU, unless REFMASK_TEST_XLA=default, the fast-compile
    flags above (on a GPU, REFMASK_TEST_DEVICE=cuda, XLA's defaults). Flags the suite was started with
    are kept; calling again changes nothing.
    """
    given = os.environ.setdefault(GIVEN_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))
    flags = given.split()
    if not any(f.startswith("--xla_force_host_platform_device_count") for f in flags):
        flags.append("--xla_force_host_platform_device_count=4")
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        flags.append("--xla_cpu_multi_thread_eigen=false")
    on_cpu = os.environ.get(DEVICE_ENV, "").strip() in ("", "cpu")
    if on_cpu and os.environ.get(XLA_MODE, "") != "default" and _jaxlib_has_fast_compile_flags():
        flags.extend(FAST_COMPILE_XLA_FLAGS)
    os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys(flags))


def xla_defaults_env() -> dict[str, str]:
    """The environment for a subprocess whose JAX compiles as XLA does by default (the flags the
    suite was started with, if any, and nothing it added)."""
    env = {**os.environ, "XLA_FLAGS": os.environ.get(GIVEN_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))}
    env.pop(GIVEN_XLA_FLAGS, None)
    return env


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
