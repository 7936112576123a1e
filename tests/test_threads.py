"""Threads making their first refmask call at the same moment, in a fresh interpreter.

A backend module is in sys.modules from the moment its import starts, so a registry that hands out
whatever sys.modules holds gives a thread a half-imported module (AttributeError: partially
initialized module 'refmask.backends.torch'). The window is widest when the framework itself is not
imported yet: then the backend's import includes importing jax or torch. So each subprocess imports
refmask and NumPy only, and eight threads released together by a barrier make their first calls:
by backend name with NumPy inputs, and with arrays of the framework (imported in the thread).
Each thread checks its result against the oracle. Several subprocesses, because a race need not
show on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")
pytest.importorskip("torch")

RUNS = 3  # the registry before its import lock failed in every one of 5 runs
THREADS = 8

CHILD = textwrap.dedent(
    f"""
    import importlib, json, sys, threading, traceback
    import numpy as np
    import refmask
    from refmask import oracle

    assert "jax" not in sys.modules and "torch" not in sys.modules, "the frameworks must load in the threads"
    scores = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11) / 4
    mask = oracle.causal_mask(3, 4)
    expected = {{"masked_softmax": oracle.masked_softmax(scores, mask), "causal_mask": mask}}
    barrier = threading.Barrier({THREADS})
    failures = []

    def native(backend, x):
        if backend == "jax":
            return importlib.import_module("jax.numpy").asarray(x)
        return importlib.import_module("torch").from_numpy(x)

    def first_call(n):
        backend = ("jax", "torch")[n % 2]
        way = n // 2 % 4
        try:
            barrier.wait()
            if way == 0:
                fn, out = "masked_softmax", refmask.masked_softmax(scores, mask, backend=backend)
            elif way == 1:
                fn, out = "masked_softmax", refmask.masked_softmax(native(backend, scores), native(backend, mask))
            elif way == 2:
                fn, out = "causal_mask", refmask.causal_mask(3, 4, backend=backend)
            else:
                causal = refmask.causal_mask(3, 4, backend=backend)
                fn, out = "causal_mask", refmask.and_masks(native(backend, mask), causal)
            got = refmask._backends.to_numpy(out)
            np.testing.assert_allclose(got, expected[fn], rtol=1e-6, atol=0)
            assert refmask._backends.array_backend(out) == backend, type(out)
        except BaseException:
            failures.append(f"thread {{n}} ({{backend}}, way {{way}}):\\n" + traceback.format_exc())

    threads = [threading.Thread(target=first_call, args=(n,)) for n in range({THREADS})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(failures))
    """
)


def run_child() -> list[str]:
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_concurrent_first_calls_all_get_a_whole_backend():
    runs = [run_child() for _ in range(RUNS)]
    failed = [f for run in runs for f in run]
    summary = f"{sum(map(bool, runs))} of {RUNS} fresh processes had failing threads"
    assert not failed, summary + ":\n" + "\n".join(failed[:4])
