"""The oracle's answer for a case: attention, weights and gradients with the case's kernel features."""

from __future__ import annotations

import numpy as np

from refmask import oracle
from refmask.testing import assert_gradients_close, attention_gradient_terms

from ..cases import Case

GRAD_NAMES = ("dq", "dk", "dv")


def attention(case: Case, q, k, v, mask, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """oracle.attention's (output, weights) for the case's bias, softcap and sinks under `policy`; mask
    None is the unmasked softmax."""
    out, weights = oracle.attention(q, k, v, mask, bias=case.bias, softcap=case.softcap, sinks=case.sinks,
                                    fully_masked=policy, return_weights=True)
    return out, weights


def gradients(case: Case, q, k, v, mask, policy: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """refmask.attention_vjp's (dq, dk, dv) for the case's d_out, and each entry's term magnitudes."""
    grads = oracle.attention_vjp(q, k, v, mask, case.d_out, bias=case.bias, softcap=case.softcap,
                                 sinks=case.sinks, fully_masked=policy)
    terms = attention_gradient_terms(q, k, v, mask, case.d_out, bias=case.bias, softcap=case.softcap,
                                     sinks=case.sinks, fully_masked=policy)
    return (grads.dq, grads.dk, grads.dv), (terms.dq, terms.dk, terms.dv)


def assert_gradients_agree(got: tuple[np.ndarray, ...], case: Case, q, k, v, mask, policy: str) -> None:
    """AssertionError unless the path's (dq, dk, dv) equal the oracle's under `policy`."""
    want, terms = gradients(case, q, k, v, mask, policy)
    for name, g, w, t in zip(GRAD_NAMES, got, want, terms, strict=True):
        assert_gradients_close(g, w, terms=t, name=name)
