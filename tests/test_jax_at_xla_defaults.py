"""The JAX backend compiled as XLA compiles by default agrees with the oracle on the catalogue.

The suite's own JAX compiles without XLA's optimisation passes (harness.environments explains why), so
this test runs refmask.testing.check_attention on the JAX backend in a subprocess at XLA's defaults:
every catalogue case in float32 under each fully-masked policy, weights and gradients included, as a
user's program compiles it, and masked_softmax(accuracy="accurate") on scores of scale 4 and 16.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from harness.environments import ROOT, xla_defaults_env
from refmask._backends import unavailable_reason

CHECK = textwrap.dedent("""
    import refmask
    from refmask.testing import check_attention

    for policy in ("zero", "uniform", "nan"):
        def fn(q, k, v, mask, **kw):
            return refmask.attention(q, k, v, mask, fully_masked=policy, backend="jax", **kw)

        def weights_fn(q, k, mask, **kw):
            return refmask.attention_weights(q, k, mask, fully_masked=policy, backend="jax", **kw)

        print(policy, check_attention(fn, weights_fn=weights_fn, backend="jax", fully_masked=policy,
                                      examples=0, dtypes=["float32"], grads=True))

    import sys
    sys.path.insert(0, "tests")  # run from the repository root: the suite's harness
    from harness import wide_scores
    from refmask import oracle
    from refmask.testing import assert_weights_close, tolerances

    for scale in (4.0, 16.0):  # accuracy="accurate" keeps its flat bound on wide scores
        scores, keep = wide_scores.draw(scale)
        w = refmask.masked_softmax(scores, keep, backend="jax", accuracy="accurate")
        assert_weights_close(w, oracle.masked_softmax(scores, keep), mask=keep, table=tolerances.SOFTMAX_MAX_ULP)
        print("accurate within SOFTMAX_MAX_ULP at scale", scale)
""")


def test_jax_backend_at_xla_defaults_agrees_with_the_oracle():
    why = unavailable_reason("jax")
    if why is not None:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=ROOT,
                          env=xla_defaults_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("catalogue cases and 0 generated examples agree") == 3, proc.stdout
    assert proc.stdout.count("accurate within SOFTMAX_MAX_ULP") == 2, proc.stdout
