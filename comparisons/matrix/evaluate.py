"""Run one native path on one case and compare what it returns with the oracle under every policy."""

from __future__ import annotations

import numpy as np

from refmask.testing import assert_attention_close, assert_weights_close

from .._base import Native, NotExpressible, Path
from ..cases import Case
from .cell import POLICIES, Cell
from .explain import explain
from .reference import assert_gradients_agree, attention

# What a path lacks when it cannot run a case that needs a kernel feature.
_LACKS = {"softcap": "no score soft-capping", "sinks": "no attention sinks", "bias": "no score bias"}


def _lacking(path: Path, feature: str) -> str:
    """What a path lacks for a case that needs `feature`, with the path's own reason for gradients."""
    if feature != "grad":
        return _LACKS[feature]
    return f"no gradients ({path.no_grads})" if path.no_grads else "no gradients"


def _agrees(native: Native, case: Case, q, k, v, mask: np.ndarray, policy: str) -> bool:
    out, weights = attention(case, q, k, v, mask, policy)
    try:
        if native.weights is not None:
            assert_weights_close(native.weights, weights, mask=mask)
        if native.output is not None:
            assert_attention_close(native.output, out)
        if case.d_out is not None:
            if native.grads is None:
                return False
            assert_gradients_agree(native.grads, case, q, k, v, mask, policy)
    except AssertionError:
        return False
    return True


def evaluate(path: Path, case: Case) -> Cell:
    """Run one native path on one case and compare it with the oracle under every policy."""
    lacks = sorted(case.features() - path.features)
    if lacks:
        return Cell(path.id, case.id, "not expressible", reason="; ".join(_lacking(path, f) for f in lacks))
    try:
        native = path.fn(case)
    except NotExpressible as err:
        return Cell(path.id, case.id, "not expressible", reason=str(err))
    except Exception as err:  # a native call that raises is a finding, not a crash of the matrix
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Cell(path.id, case.id, "error", reason=f"{type(err).__name__}: {message}"[:200])
    q, k, v = native.qkv or (case.q, case.k, case.v)
    for label, mask in case.masks.items():
        policies = [p for p in POLICIES if _agrees(native, case, q, k, v, mask, p)]
        if policies:
            return Cell(path.id, case.id, "agrees", policies, alignment=label)
    max_error, reason = explain(native, case, q, k, v, case.mask)
    # JSON has no inf: a NaN where the oracle has a number is recorded as the string "NaN".
    return Cell(path.id, case.id, "differs", max_error=max_error if np.isfinite(max_error) else "NaN", reason=reason)
