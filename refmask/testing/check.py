"""check_attention: a user's attention function against the oracle, on every mask kind and dtype.

    from refmask.testing import check_attention

    def test_my_attention():
        check_attention(my_attention)          # fn(q, k, v, mask) -> out, BHTD, NumPy arrays

It runs `fn` over the shared case catalogue (refmask.testing.cases.ATTENTION_CASES, filtered by
mask kind) and over hypothesis-generated examples (refmask.testing.strategies.attention_cases),
holding each output to the oracle with assert_attention_close (and, with weights_fn=, each weight
matrix with assert_weights_close). hypothesis is imported only when examples > 0, and
ml_dtypes only for bfloat16.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import oracle
from .._backends import BACKENDS, from_numpy, install_hint, to_numpy, unavailable_reason
from . import tolerances as tol
from ._assert import MismatchError, assert_attention_close, assert_weights_close, output_error, weights_error
from .cases import ATTENTION_CASES, CASE_KINDS, DTYPES, MASK_KINDS, POLICIES, AttentionCase

LAYOUTS = ("BHTD", "BTHD")


# Masks up to this many keys and queries are drawn into a failure report.
_DRAW_MASK_MAX = 16


class CheckError(AssertionError):
    """check_attention's failure: `fn` disagrees with the oracle (or raised) on some input."""


@dataclass(frozen=True)
class CheckReport:
    """What check_attention ran, returned when everything agreed.

    cases: catalogue cases run (one per case and dtype); examples: hypothesis examples run.
    worst_output_ulp: per dtype, the largest output error in units of eps(dtype) * max|v| (the unit
      of tolerances.ATTENTION_OUTPUT_MAX_ULP). worst_weights_ulp: per dtype, the largest weight error
      in ULPs (only with weights_fn). skipped: "what: why" for everything left out.
    """

    cases: int
    examples: int
    worst_output_ulp: dict[str, float]
    worst_weights_ulp: dict[str, float] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"check_attention: {self.cases} catalogue cases and {self.examples} generated examples agree"]
        for name, worst in self.worst_output_ulp.items():
            w = self.worst_weights_ulp.get(name)
            weights = "" if w is None else f", weights {w:g} ULP"
            lines.append(f"  {name}: output {worst:.3g} eps*max|v|{weights}")
        if self.skipped:
            reasons: dict[str, int] = {}
            for entry in self.skipped:
                why = entry.split(": ", 1)[-1]
                reasons[why] = reasons.get(why, 0) + 1
            lines.append("  skipped: " + "; ".join(f"{n} x {why}" for why, n in reasons.items()))
        return "\n".join(lines)


@dataclass
class _Tally:
    cases: int = 0
    examples: int = 0
    output: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def record(self, dtype: str, out_err: float, w_ulp: float | None) -> None:
        self.output[dtype] = max(self.output.get(dtype, 0.0), out_err)
        if w_ulp is not None:
            self.weights[dtype] = max(self.weights.get(dtype, 0.0), w_ulp)


@dataclass(frozen=True)
class _Settings:
    fn: Callable[..., Any]
    weights_fn: Callable[..., Any] | None
    layout: str
    backend: str
    policy: str  # the oracle's policy ("zero" when fully-masked rows are left out)
    shown_policy: str | None  # what the caller passed
    max_ulp: float | None
    rtol: float | None
    atol: float | None


@tol.checks_tolerances
def check_attention(
    fn: Callable[..., Any],
    *,
    layout: str = "BHTD",
    mask_kinds: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    fully_masked: str | None = "zero",
    examples: int = 50,
    backend: str = "numpy",
    weights_fn: Callable[..., Any] | None = None,
    grouped_query: bool = False,
    zero_length: bool = False,
    max_ulp: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> CheckReport:
    """Check `fn(q, k, v, mask) -> out` against refmask's oracle; raise AssertionError on the first
    disagreement, return a CheckReport when everything agrees.

    What fn gets (arrays of `backend`: NumPy arrays, jax Arrays or torch tensors):
      layout="BHTD": q (B, H, T, D), k (B, H_kv, S, D), v (B, H_kv, S, Dv); returns (B, H, T, Dv).
      layout="BTHD": q (B, T, H, D), k (B, S, H_kv, D), v (B, S, H_kv, Dv); returns (B, T, H, Dv).
      mask: always a 4-D boolean array in *scores* layout, whatever the layout of q/k/v: True = may
        attend, broadcastable to the scores (B, H, T, S) and at its smallest such shape ((1, 1, T, S)
        for a causal mask, (B, 1, 1, S) for key padding, (B, 1, T, S) for segments); never None (no
        mask is an all-True (1, 1, T, S)).
      H_kv == H unless grouped_query=True (then query head h reads key/value head h // (H // H_kv)).
      Scale: the default 1/sqrt(D). Output dtype must equal q's dtype.
    weights_fn(q, k, mask) -> weights, optional, checked the same way; weights are (B, H, T, S) in
    both layouts.

    mask_kinds: the mask kinds your function supports (see MASK_KINDS); a case runs when each of
      its kinds is selected. Default: all.
    dtypes: names among "float32", "float16", "bfloat16", "float64". Default: all four (for jax,
      float64 only when jax_enable_x64 is on).
    fully_masked: the policy your function follows on rows with no kept key ("zero", "uniform",
      "nan"), or None to leave such rows out (catalogue cases that have one are skipped; generated
      masks get key 0 kept in such rows).
    examples: hypothesis examples (0: catalogue only, and hypothesis is not imported).
    zero_length: also run the catalogue's cases with a zero-length axis (T=0, S=0, B=0).
    max_ulp, rtol, atol: tolerances passed on to assert_attention_close / assert_weights_close
      (default: the per-dtype bounds in refmask.testing.tolerances, in units of eps(dtype) * max|v|
      for outputs and ULPs for weights); finite numbers >= 0, checked before anything runs.
    seed: hypothesis' seed (runs are reproducible).

    A failure names the input (catalogue case or shrunk generated example, with its values when
    small), dtype, policy, layout and shapes, draws the failing batch item's mask as 0/1, then gives
    the assert report. When the output is wrong and no weights_fn is given, fn is called once more
    with v = identity (Dv = S), whose output is its weights if it computes weights @ v, and the
    report on those weights follows as a diagnosis.
    """
    __tracebackhide__ = True
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {fn!r}")
    if weights_fn is not None and not callable(weights_fn):
        raise TypeError(f"weights_fn must be callable or None; got {weights_fn!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    why = unavailable_reason(backend)
    if why is not None:
        raise ImportError(why)
    if fully_masked is not None and fully_masked not in POLICIES:
        raise ValueError(f"fully_masked must be one of {', '.join(map(repr, POLICIES))} or None; got {fully_masked!r}")
    kinds = _kinds(mask_kinds)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an int >= 0; got {examples!r}")
    if examples:
        _require("hypothesis", "check_attention needs hypothesis for examples > 0 (examples=0: the catalogue alone)")
    skipped: list[str] = []
    run_dtypes = _dtypes(dtypes, backend, skipped)
    settings = _Settings(fn, weights_fn, layout, backend, fully_masked or "zero", fully_masked, max_ulp, rtol, atol)
    tally = _Tally()

    for case in ATTENTION_CASES:
        why = _skip_reason(case, kinds, fully_masked, zero_length)
        if why:
            skipped.append(f"{case.id}: {why}")
            continue
        for dtype in run_dtypes:
            q, k, v, mask = _case_arrays(case, dtype, grouped_query)
            label = f'catalogue case "{case.id}"'
            tally.record(dtype, *_check_one(settings, q, k, v, mask, dtype, label))
            tally.cases += 1

    if examples and run_dtypes:
        _run_examples(settings, tally, kinds, run_dtypes, examples, grouped_query, fully_masked is not None, seed)
    return CheckReport(tally.cases, tally.examples, dict(tally.output), dict(tally.weights), tuple(skipped))


def _kinds(mask_kinds: Iterable[str] | None) -> frozenset[str] | None:
    if mask_kinds is None:
        return None
    if isinstance(mask_kinds, str):
        mask_kinds = (mask_kinds,)
    kinds = frozenset(mask_kinds)
    unknown = sorted(kinds - set(MASK_KINDS))
    if unknown or not kinds:
        raise ValueError(f"mask_kinds must name some of {', '.join(map(repr, MASK_KINDS))}; got {sorted(kinds)!r}")
    return kinds


def _dtypes(dtypes: Iterable[str] | None, backend: str, skipped: list[str]) -> tuple[str, ...]:
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    chosen = tuple(DTYPES if dtypes is None else dtypes)
    unknown = [d for d in chosen if d not in DTYPES]
    if unknown or not chosen:
        raise ValueError(f"dtypes must name some of {', '.join(map(repr, DTYPES))}; got {list(chosen)!r}")
    if backend == "jax" and "float64" in chosen and not _jax_x64():
        if dtypes is not None:
            raise ValueError('dtype "float64" with backend="jax" needs jax.config.update("jax_enable_x64", True)')
        chosen = tuple(d for d in chosen if d != "float64")
        skipped.append("float64: jax_enable_x64 is off")
    if "bfloat16" in chosen:
        if dtypes is not None:
            _require("ml_dtypes", "check_attention needs ml_dtypes for bfloat16 in NumPy")
        elif not _importable("ml_dtypes"):
            chosen = tuple(d for d in chosen if d != "bfloat16")
            skipped.append("bfloat16: ml_dtypes (bfloat16 in NumPy) is not installed")
    return chosen


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return False
    return True


def _require(module: str, what: str) -> None:
    """Import `module`, or raise a one-line ImportError: `what`, then how to install refmask[test]."""
    __tracebackhide__ = True
    if not _importable(module):
        raise ImportError(f"{what}, which is not installed: {install_hint('test')}")


def _jax_x64() -> bool:
    from jax import dtypes

    return bool(dtypes.canonicalize_dtype(np.float64) == np.float64)


def _mask_is_fully_masked_somewhere(mask: np.ndarray | None) -> bool:
    return mask is not None and mask.shape[-1] > 0 and bool((~mask.any(axis=-1)).any())


def _skip_reason(case: AttentionCase, kinds: frozenset[str] | None, fully_masked: str | None, zero_length: bool) -> str:
    case_kinds = CASE_KINDS.get(case.id, ("other",))
    if kinds is not None and not set(case_kinds) <= kinds:
        return "mask kind not in mask_kinds"
    if 0 in (*case.batch, case.q_len, case.kv_len):
        if not zero_length:
            return "zero-length axis (zero_length=False)"
        if case.kv_len == 0 and fully_masked is None:
            return "S=0: every row is fully masked (fully_masked=None)"
    if fully_masked is None and _mask_is_fully_masked_somewhere(case.mask()):
        return "has fully-masked rows (fully_masked=None)"
    return ""


def _as_4d_mask(mask: np.ndarray | None, batch: tuple[int, ...], t: int, s: int) -> np.ndarray:
    """The mask as a 4-D (B or 1, H or 1, T or 1, S) boolean array, batch axes flattened into B."""
    if mask is None:
        return np.ones((1, 1, t, s), bool)
    nb = len(batch)
    m = mask.reshape((1,) * (nb + 3 - mask.ndim) + mask.shape)  # (*batch or 1s, H or 1, T or 1, S)
    if nb == 1:
        return m
    if all(n == 1 for n in m.shape[:nb]):
        return m.reshape((1, *m.shape[nb:]))
    m = np.broadcast_to(m, (*batch, *m.shape[nb:]))
    return m.reshape((math.prod(batch), *m.shape[nb:]))


def _case_arrays(case: AttentionCase, dtype: str, grouped_query: bool) -> tuple[np.ndarray, ...]:
    a = case.arrays(dtype)
    b = math.prod(case.batch)
    q = a["q"].reshape(b, case.heads, case.q_len, case.head_dim)
    k = a["k"].reshape(b, case.kv_heads, case.kv_len, case.head_dim)
    v = a["v"].reshape(b, case.kv_heads, case.kv_len, case.value_dim)
    if not grouped_query and case.kv_heads != case.heads:
        k, v = (np.repeat(x, case.heads // case.kv_heads, axis=1) for x in (k, v))
    return q, k, v, _as_4d_mask(case.mask(), case.batch, case.q_len, case.kv_len)


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "BHTD" else np.ascontiguousarray(np.swapaxes(x, 1, 2))


def _layout_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return shape if layout == "BHTD" else (shape[0], shape[2], shape[1], *shape[3:])


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _context(s: _Settings, fn: Callable[..., Any], q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray,
             dtype: str, label: str, what: str,
             detail: str = "") -> str:
    shapes = ", ".join(
        f"{n} {_layout_shape(x.shape, s.layout)}" for n, x in (("q", q), ("k", k), ("v", v))
    )
    return "\n".join(
        [
            f"check_attention: `{_fn_name(fn)}` {what}",
            f"  input: {label}, dtype {dtype}, fully_masked={s.shown_policy!r}, layout {s.layout}, backend {s.backend}",
            f"  shapes: {shapes}, mask {mask.shape} (scores layout (B, H, T, S), True = attend)",
            *([detail] if detail else []),
        ]
    )


def _draw_mask(mask: np.ndarray, index: tuple[int, ...] | None) -> str:
    """The (T, S) mask of the failing (batch, head) as rows of 1 (attend) and 0, when small."""
    if mask.shape[-1] > _DRAW_MASK_MAX or mask.shape[-2] > _DRAW_MASK_MAX or mask.size == 0 or mask.all():
        return ""
    b, h = (index[0], index[1]) if index is not None and len(index) == 4 else (0, 0)
    mb, mh = (b if mask.shape[0] > 1 else 0), (h if mask.shape[1] > 1 else 0)
    rows = ["    " + " ".join("1" if x else "0" for x in row) for row in mask[mb, mh]]
    shared = " (one row, shared by every query)" if mask.shape[2] == 1 else ""
    return (f"  mask[batch={mb}, head={mh}] (rows = queries, columns = keys, 1 = attend){shared}:\n"
            + "\n".join(rows))


def _fresh(arrays: Iterable[np.ndarray], backend: str) -> list[Any]:
    # Writable copies: fn may work in place, and must not change the arrays a report shows.
    return [from_numpy(np.array(x, copy=True), backend) for x in arrays]


def _call(s: _Settings, fn: Callable[..., Any], args: Sequence[np.ndarray], context: str) -> np.ndarray:
    __tracebackhide__ = True
    try:
        out = fn(*_fresh(args, s.backend))
    except Exception as err:
        raise CheckError(f"{context}\n  it raised {type(err).__name__}: {err}") from err
    try:
        return np.asarray(to_numpy(out))
    except Exception as err:
        kind = type(out).__name__
        raise CheckError(f"{context}\n  it returned {kind}, not an array of backend {s.backend!r}") from err


def _fail(context: str, err: AssertionError, mask: np.ndarray, note: str = "", diagnosis: str = "") -> CheckError:
    index = err.mismatch.index if isinstance(err, MismatchError) else None
    parts = [context, _draw_mask(mask, index), note, str(err), diagnosis]
    return CheckError("\n".join(p for p in parts if p))


def _probe_weights(s: _Settings, args: Sequence[np.ndarray], expected_w: np.ndarray, mask: np.ndarray,
                   dtype: str) -> str:
    """Diagnosis of a wrong output: fn's weights, read by calling it with v = identity (Dv = S), so
    that its output is its weights; "" when fn cannot be called that way."""
    q, k = args[0], args[1]
    b, s_len = expected_w.shape[0], expected_w.shape[-1]
    h_kv = k.shape[1] if s.layout == "BHTD" else k.shape[2]
    eye = np.broadcast_to(np.eye(s_len, dtype=q.dtype), (b, h_kv, s_len, s_len))
    try:
        w = np.asarray(to_numpy(s.fn(*_fresh((q, k, _to_layout(eye, s.layout), mask), s.backend))))
        w = _to_layout(w, s.layout)
        assert_weights_close(w, expected_w, dtype=dtype, max_ulp=s.max_ulp, rtol=s.rtol, atol=s.atol, mask=mask)
    except MismatchError as err:
        report = str(err).replace("\n", "\n  ")
        return ("diagnosis: fn's weights, read as its output for v = identity (if out = weights @ v), "
                f"differ too:\n  {report}")
    except Exception:
        return ""
    return ("diagnosis: fn's weights, read as its output for v = identity, agree with the oracle's: "
            "the error is in the product with v")


def _check_one(s: _Settings, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, dtype: str, label: str,
               detail: str = "") -> tuple[float, float | None]:
    """Run fn (and weights_fn) on one input; raise CheckError, or return (output error, weights ULP)."""
    __tracebackhide__ = True
    expected, expected_w = oracle.attention(q, k, v, mask, fully_masked=s.policy, return_weights=True)
    context = _context(s, s.fn, q, k, v, mask, dtype, label, "disagrees with the oracle:", detail)
    args = (_to_layout(q, s.layout), _to_layout(k, s.layout), _to_layout(v, s.layout), mask)
    out = _call(s, s.fn, args, _context(s, s.fn, q, k, v, mask, dtype, label, "failed to run", detail))
    want = _layout_shape(expected.shape, s.layout)
    if out.shape != want:
        raise CheckError(f"{context}\n  output shape {out.shape}, expected {want} ({s.layout}: B, "
                         f"{'H, T' if s.layout == 'BHTD' else 'T, H'}, Dv)")
    out = _to_layout(out, s.layout)  # back to BHTD: swapping T and H is its own inverse
    v_scale = float(np.abs(v.astype(np.float64)).max(initial=0.0))
    note = "" if s.layout == "BHTD" else "  (indices below are (batch, head, query, dim) whatever the layout)"
    try:
        assert_attention_close(out, expected, dtype=dtype, max_ulp=s.max_ulp, scale=v_scale,
                               rtol=s.rtol, atol=s.atol, mask=mask, fully_masked=s.policy)
    except AssertionError as err:
        diagnosis = _probe_weights(s, args, expected_w, mask, dtype) if s.weights_fn is None else ""
        raise _fail(context, err, mask, note, diagnosis) from None
    out_err = output_error(out, expected, scale=v_scale, mask=mask if s.policy == "zero" else None)
    if s.weights_fn is None:
        return out_err, None
    w_context = _context(s, s.weights_fn, q, k, v, mask, dtype, label, "disagrees with the oracle:", detail)
    w = _call(s, s.weights_fn, (*args[:2], mask), _context(s, s.weights_fn, q, k, v, mask, dtype, label,
                                                             "failed to run", detail))
    try:
        assert_weights_close(w, expected_w, dtype=dtype, max_ulp=s.max_ulp, rtol=s.rtol, atol=s.atol, mask=mask)
    except AssertionError as err:
        raise _fail(w_context, err, mask) from None
    return out_err, weights_error(w, expected_w, mask=mask)


def _run_examples(s: _Settings, tally: _Tally, kinds: frozenset[str] | None, dtypes: Sequence[str], examples: int,
                  grouped_query: bool, allow_fully_masked: bool, seed: int) -> None:
    __tracebackhide__ = True
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from .strategies import attention_cases

    strategy = attention_cases(kinds=None if kinds is None else sorted(kinds), dtypes=dtypes,
                               grouped_query=grouped_query, allow_fully_masked=allow_fully_masked)

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), print_blob=False,
              phases=[p for p in Phase if p is not Phase.explain])
    @given(example=strategy)
    def check_generated_example(example: Any) -> None:
        tally.examples += 1
        q, k, v, mask, dtype = example
        tally.record(dtype, *_check_one(s, q, k, v, mask, dtype, f"generated example {example.describe()}",
                                        example.values()))

    check_generated_example()
    tally.examples = min(tally.examples, examples)
