"""Why a cell differs: its max error and a one-line reason (NaN leaks, entries beyond tolerance, and
what the path gives on fully-masked rows)."""

from __future__ import annotations

import dataclasses

import numpy as np

from refmask.testing import assert_attention_close, assert_weights_close

from ..cases import Case
from .cell import POLICIES
from .reference import GRAD_NAMES, assert_gradients_agree, attention, gradients


def _fully_masked_rows(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(B, H, T) bool: the query rows with no kept key."""
    return np.asarray(~np.broadcast_to(mask, shape).any(axis=-1))


def _max_abs(a: np.ndarray, e: np.ndarray) -> float:
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    if a64.size == 0:
        return 0.0
    if (np.isnan(a64) != np.isnan(e64)).any():
        return float("inf")
    d = np.abs(np.where(np.isnan(e64), 0.0, a64 - e64))
    return float(np.nan_to_num(d, nan=np.inf).max())


def _row_behaviour(native, case: Case, rows: np.ndarray, q, k, v, mask) -> str:
    """What the path gives on fully-masked rows: "zero", "uniform", "nan", "mixed" or "other"."""
    kinds = set()
    for policy in (*POLICIES, "unmasked"):
        if policy == "unmasked":  # the row's plain softmax, as if nothing were masked
            out, weights = attention(case, q, k, v, None, "zero")
        else:
            out, weights = attention(case, q, k, v, mask, policy)
        ok = True
        for got, want in ((native.weights, weights), (native.output, out)):
            if got is None:
                continue
            g, w = got[rows].astype(np.float64), want[rows].astype(np.float64)
            same_nan = np.array_equal(np.isnan(g), np.isnan(w))
            close = np.allclose(np.nan_to_num(g), np.nan_to_num(w), rtol=1e-2, atol=1e-2)
            ok &= bool(same_nan and close)
        if ok:
            kinds.add(policy)
    if len(kinds) == 1:
        return kinds.pop()
    if native.weights is not None:
        g = native.weights[rows].astype(np.float64)
    else:
        g = native.output[rows].astype(np.float64)
    return "mixed" if np.isnan(g).any() and not np.isnan(g).all() else "other"


_ROW_WORDS = {
    "zero": "gives 0 (zero)",
    "uniform": "gives uniform 1/S weights (uniform)",
    "nan": "gives NaN (nan)",
    "unmasked": "give the softmax of their raw scores, as if unmasked (the fill cancels out)",
    "mixed": "gives NaN in some entries only",
    "other": "gives neither 0, uniform nor NaN",
}


def _max_error(native, case: Case, q, k, v, mask) -> float:
    """max |native - oracle| over every entry (gradients included), under the policy that makes it
    smallest (inf: a NaN where the oracle has a number, or the reverse)."""
    best = float("inf")
    for policy in POLICIES:
        out, weights = attention(case, q, k, v, mask, policy)
        pairs = [(native.weights, weights), (native.output, out)]
        if case.d_out is not None and native.grads is not None:
            pairs += zip(native.grads, gradients(case, q, k, v, mask, policy)[0], strict=True)
        best = min(best, max(_max_abs(got, want) for got, want in pairs if got is not None))
    return best


def _gradient_reasons(native, case: Case, q, k, v, mask, full: np.ndarray) -> list[str]:
    """Why a path's gradients differ: NaN on fully-masked rows or elsewhere, or entries beyond tolerance."""
    if native.grads is None:
        return ["the path returned no gradients"]
    reasons = []
    nan = {name: np.isnan(g.astype(np.float64)) for name, g in zip(GRAD_NAMES, native.grads, strict=True)}
    if nan["dq"][full].any():
        reasons.append("NaN gradients (dq) on fully-masked rows")
    if nan["dq"][~full].any():
        reasons.append("NaN gradients (dq) on rows with kept keys")
    kv_nan = [name for name in ("dk", "dv") if nan[name].any()]
    if kv_nan:
        reasons.append(f"NaN in {' and '.join(kv_nan)}")
    if reasons:
        return reasons
    errors = []
    for policy in POLICIES:
        try:
            assert_gradients_agree(native.grads, case, q, k, v, mask, policy)
        except AssertionError as err:
            errors.append(str(err).splitlines()[0])
        else:
            return []  # the gradients agree; the forward pass is what differs
    return [f"gradients beyond tolerance under every policy ({errors[0]})"]


def _bias_read_as(native, case: Case, q, k, v, mask) -> str | None:
    """Which of the case's other readings of its score bias the path's results agree with, if one does."""
    for label, bias in case.bias_variants.items():
        out, weights = attention(dataclasses.replace(case, bias=bias), q, k, v, mask, "zero")
        try:
            if native.weights is not None:
                assert_weights_close(native.weights, weights, mask=mask)
            if native.output is not None:
                assert_attention_close(native.output, out)
        except AssertionError:
            continue
        return f"the score bias it adds is {label}"
    return None


def explain(native, case: Case, q, k, v, mask) -> tuple[float, str]:
    """Max error and a one-line reason the path differs from the oracle under every policy."""
    read_as = _bias_read_as(native, case, q, k, v, mask)
    if read_as is not None:
        return _max_error(native, case, q, k, v, mask), read_as
    full = _fully_masked_rows(mask, case.shape)
    kept = ~full
    out, weights = attention(case, q, k, v, mask, "zero")
    found: dict[str, list[str]] = {}  # reason -> the returned arrays ("weights", "output") it applies to
    for name, got, want in (("weights", native.weights, weights), ("output", native.output, out)):
        if got is None:
            continue
        g, w = got[kept], want[kept]
        if np.isnan(g.astype(np.float64)).any():
            if case.poison == "nan":
                found.setdefault("masked NaN scores leak into the {} of rows with kept keys", []).append(name)
            elif case.poison == "inf":
                found.setdefault("masked +inf scores leak (as NaN) into the {} of rows with kept keys", []).append(name)
            else:
                found.setdefault("NaN in the {} of rows with kept keys", []).append(name)
            continue
        try:
            if name == "weights":
                assert_weights_close(g, w)
            else:
                assert_attention_close(g, w)
        except AssertionError as err:
            # "weights: 4 of 100 entries differ (more than 1 ULP apart)" -> "4 of 100 entries more than 1 ULP apart"
            first = str(err).splitlines()[0].split(": ", 1)[-1]
            first = first.replace(" differ (", " ").rstrip(")")
            found.setdefault(f"{{}} of rows with kept keys beyond tolerance: {first}", []).append(name)
    reasons = [template.format(" and ".join(names)) for template, names in found.items()]
    if full.any():
        behaviour = _row_behaviour(native, case, full, q, k, v, mask)
        if behaviour in ("unmasked", "mixed", "other") or not reasons:
            reasons.append(f"fully-masked rows {_ROW_WORDS[behaviour]}")
    if case.d_out is not None:
        reasons += _gradient_reasons(native, case, q, k, v, mask, full)
    return _max_error(native, case, q, k, v, mask), "; ".join(reasons) or "differs from the oracle"
