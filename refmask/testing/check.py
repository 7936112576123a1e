"""check_attention: a user's attention function against the oracle, on every mask kind and dtype.

    from refmask.testing import check_attention

    def test_my_attention():
        check_attention(my_attention)          # fn(q, k, v, mask) -> out, BHTD, NumPy arrays

It runs `fn` over the shared case catalogue (refmask.testing.cases.ATTENTION_CASES, filtered by
mask kind; VARLEN_CASES for layout="varlen") and over hypothesis-generated examples
(refmask.testing.strategies.attention_cases), holding each output to the oracle with
assert_attention_close, and on request its lse (assert_lse_close), its weights (weights_fn=,
assert_weights_close) and its gradients (grads=True: torch autograd, jax.vjp or backward_fn=,
against refmask.attention_vjp with assert_gradients_close). hypothesis is imported only when
examples > 0, and ml_dtypes only for bfloat16.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _arrays, oracle
from .._backends import BACKENDS, from_numpy, install_hint, to_numpy, unavailable_reason
from . import _autodiff
from . import tolerances as tol
from ._assert import (
    MismatchError,
    assert_attention_close,
    assert_gradients_close,
    assert_lse_close,
    assert_weights_close,
    gradient_error,
    lse_error,
    output_error,
    weights_error,
)
from ._gradients import attention_gradient_terms
from ._layouts import AXES, LAYOUTS, LSE_AXES, from_layout, lse_from_layout, lse_shape_in, shape_in, to_layout
from .cases import ATTENTION_CASES, CASE_KINDS, DTYPES, MASK_KINDS, POLICIES, VARLEN_CASES, AttentionCase, VarlenCase

__all__ = ["LAYOUTS", "CheckError", "CheckReport", "check_attention"]

# Masks up to this many keys and queries are drawn into a failure report.
_DRAW_MASK_MAX = 16

# The mask kinds a varlen batch can express within each sequence.
VARLEN_KINDS = ("none", "causal", "sliding_window")


class CheckError(AssertionError):
    """check_attention's failure: `fn` disagrees with the oracle (or raised) on some input."""


@dataclass(frozen=True)
class CheckReport:
    """What check_attention ran, returned when everything agreed.

    cases: catalogue cases run (one per case and dtype); examples: hypothesis examples run.
    worst_output_ulp: per dtype, the largest output error in units of eps(dtype) * max|v| (the unit
      of tolerances.ATTENTION_OUTPUT_MAX_ULP). worst_weights_ulp: per dtype, the largest weight error
      in ULPs (only with weights_fn). skipped: "what: why" for everything left out.
    worst_lse_ulp (lse=True): per dtype of the inputs, the largest lse error in units of
      eps(lse's dtype) * max(1, max|lse|) (tolerances.LSE_MAX_ULP's unit).
    worst_gradient_ulp (grads=True): per dtype, the largest gradient error in units of eps(dtype) times
      the magnitude of the entry's terms (tolerances.GRADIENT_MAX_ULP's unit).
    """

    cases: int
    examples: int
    worst_output_ulp: dict[str, float]
    worst_weights_ulp: dict[str, float] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    worst_lse_ulp: dict[str, float] = field(default_factory=dict)
    worst_gradient_ulp: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"check_attention: {self.cases} catalogue cases and {self.examples} generated examples agree"]
        for name, worst in self.worst_output_ulp.items():
            parts = [f"output {worst:.3g} eps*max|v|"]
            if name in self.worst_weights_ulp:
                parts.append(f"weights {self.worst_weights_ulp[name]:g} ULP")
            if name in self.worst_lse_ulp:
                parts.append(f"lse {self.worst_lse_ulp[name]:.3g} eps*max(1,|lse|)")
            if name in self.worst_gradient_ulp:
                parts.append(f"gradients {self.worst_gradient_ulp[name]:.3g} eps*terms")
            lines.append(f"  {name}: {', '.join(parts)}")
        if self.skipped:
            reasons: dict[str, int] = {}
            for entry in self.skipped:
                why = entry.split(": ", 1)[-1]
                reasons[why] = reasons.get(why, 0) + 1
            lines.append("  skipped: " + "; ".join(f"{n} x {why}" for why, n in reasons.items()))
        return "\n".join(lines)


@dataclass
class _Errors:
    """The errors of one input that passed: output always, the others when checked."""

    output: float
    weights: float | None = None
    lse: float | None = None
    gradients: float | None = None


@dataclass
class _Tally:
    cases: int = 0
    examples: int = 0
    output: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    lse: dict[str, float] = field(default_factory=dict)
    gradients: dict[str, float] = field(default_factory=dict)

    def record(self, dtype: str, errors: _Errors) -> None:
        for table, value in ((self.output, errors.output), (self.weights, errors.weights), (self.lse, errors.lse),
                             (self.gradients, errors.gradients)):
            if value is not None:
                table[dtype] = max(table.get(dtype, 0.0), value)

    def report(self, skipped: Sequence[str]) -> CheckReport:
        return CheckReport(self.cases, self.examples, dict(self.output), dict(self.weights), tuple(skipped),
                           dict(self.lse), dict(self.gradients))


@dataclass(frozen=True)
class _Settings:
    fn: Callable[..., Any]
    weights_fn: Callable[..., Any] | None
    layout: str
    mask_arg: str | None  # None: the mask is fn's fourth positional argument (weights_fn's third)
    backend: str
    policy: str  # the oracle's policy ("zero" when fully-masked rows are left out)
    shown_policy: str | None  # what the caller passed
    max_ulp: float | None
    rtol: float | None
    atol: float | None
    lse: bool = False
    grads: bool = False
    backward_fn: Callable[..., Any] | None = None
    softcap: float | None = None
    sinks: bool = False


@dataclass(frozen=True)
class _Input:
    """One input as the oracle sees it, (B, H, T, D) arrays and a 4-D mask, and what a report says of it."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray
    dtype: str
    label: str
    detail: str = ""
    sinks: np.ndarray | None = None
    varlen: VarlenCase | None = None


@tol.checks_tolerances
def check_attention(
    fn: Callable[..., Any],
    *,
    layout: str = "BHTD",
    mask_arg: str | None = None,
    mask_kinds: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    fully_masked: str | None = "zero",
    examples: int = 50,
    backend: str = "numpy",
    weights_fn: Callable[..., Any] | None = None,
    lse: bool = False,
    grads: bool = False,
    backward_fn: Callable[..., Any] | None = None,
    softcap: float | None = None,
    sinks: bool = False,
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
      layout="varlen": flash-attn's varlen interface instead, over refmask.testing.cases.VARLEN_CASES:
        fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=bool[, window_size=
        (left, right)]) with q (total_q, H, D), k (total_k, H_kv, D), v (total_k, H_kv, Dv), cu_seqlens
        (B + 1,) int32 arrays and max_seqlen Python ints; returns (total_q, H, Dv). Causal and window are
        aligned bottom-right within each sequence (refmask.varlen_mask); window_size is passed only for
        windowed cases. Sequences may be empty (no query, or no key).
      H_kv == H unless grouped_query=True (then query head h reads key/value head h // (H // H_kv)).
      Scale: the default 1/sqrt(D). Output dtype must equal q's dtype.
    mask_arg: the name of the keyword fn (and weights_fn) takes the mask as, when not positionally
      after q, k, v: mask_arg="mask" calls fn(q, k, v, mask=mask), as Flax's
      dot_product_attention(query, key, value, bias=None, mask=None, ...) takes it.
    weights_fn(q, k, mask) -> weights, optional, checked the same way; weights are (B, H, T, S) in
      both padded layouts. It gets fn's softcap= and sinks= keywords too, when those are set.
    lse=True: fn returns (out, lse), lse the log-sum-exp of each row's kept scores, (B, H, T) in both
      padded layouts and (H, total_q) in varlen (flash-attn's softmax_lse), float32 for float16,
      bfloat16 and float32 inputs (float64 for float64), -inf for a row with no kept key.
    grads=True: also the gradients of sum(d_out * out) for q, k and v (and the sinks), d_out drawn
      from N(0, 1) in q's dtype and layout, against refmask.attention_vjp: by torch autograd
      (backend="torch") or jax.vjp (backend="jax") through fn, or by backward_fn, which takes
      fn's arguments and then d_out, backward_fn(q, k, v, mask, d_out) -> (dq, dk, dv) (fn's keywords
      too; (dq, dk, dv, dsinks) with sinks), in fn's layout. backward_fn is needed for NumPy and
      replaces autodiff for the others.
    softcap: a number > 0: fn is also passed softcap=softcap, and the oracle caps the scores by
      softcap * tanh(scores / softcap).
    sinks=True: fn is also passed sinks=, one logit per query head, (H,) in q's dtype (gpt-oss), each
      in its row's softmax denominator.

    mask_kinds: the mask kinds your function supports (see MASK_KINDS); a case runs when each of
      its kinds is selected. Default: all (for varlen: "none", "causal", "sliding_window").
    dtypes: names among "float32", "float16", "bfloat16", "float64". Default: all four (for jax,
      float64 only when jax_enable_x64 is on).
    fully_masked: the policy your function follows on rows with no kept key ("zero", "uniform",
      "nan"), or None to leave such rows out (catalogue cases that have one are skipped; generated
      masks get key 0 kept in such rows).
    examples: hypothesis examples (0: catalogue only, and hypothesis is not imported); none for varlen.
    zero_length: also run the catalogue's cases with a zero-length axis (T=0, S=0, B=0; for varlen,
      batches with no query or no token at all).
    max_ulp, rtol, atol: tolerances passed on to assert_attention_close / assert_weights_close
      (default: the per-dtype bounds in refmask.testing.tolerances, in units of eps(dtype) * max|v|
      for outputs and ULPs for weights); finite numbers >= 0, checked before anything runs. The lse
      and the gradients are held to their own defaults (tolerances.LSE_MAX_ULP, GRADIENT_MAX_ULP).
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
    for name, value in (("weights_fn", weights_fn), ("backward_fn", backward_fn)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None; got {value!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    why = unavailable_reason(backend)
    if why is not None:
        raise ImportError(why)
    if fully_masked is not None and fully_masked not in POLICIES:
        raise ValueError(f"fully_masked must be one of {', '.join(map(repr, POLICIES))} or None; got {fully_masked!r}")
    for name, flag in (("lse", lse), ("grads", grads), ("sinks", sinks)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {flag!r}")
    if backward_fn is not None and not grads:
        raise ValueError("backward_fn is for grads=True (it gives the gradients check_attention then checks)")
    if grads and backward_fn is None and backend not in _autodiff.AUTODIFF:
        raise ValueError(f'grads=True with backend="{backend}" needs backward_fn(q, k, v, mask, d_out) -> (dq, dk, dv) '
                         f"(backend torch or jax: their autodiff through fn)")
    softcap = _arrays.softcap_value(softcap)
    if layout == "varlen":
        if weights_fn is not None:
            raise ValueError('weights_fn is not for layout="varlen" (its weights would be (H, total_q, total_k))')
        if mask_arg is not None:
            raise ValueError('mask_arg is not for layout="varlen": fn gets cu_seqlens, not a mask')
    _check_mask_arg(mask_arg, fn, weights_fn)
    kinds = _kinds(mask_kinds)
    if layout == "varlen" and kinds is not None and not kinds & set(VARLEN_KINDS):
        raise ValueError(f'layout="varlen" expresses the mask kinds {", ".join(map(repr, VARLEN_KINDS))} within '
                         f"each sequence; mask_kinds={sorted(kinds)!r} selects none of them")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an int >= 0; got {examples!r}")
    if examples and layout != "varlen":
        _require("hypothesis", "check_attention needs hypothesis for examples > 0 (examples=0: the catalogue alone)")
    skipped: list[str] = []
    run_dtypes = _dtypes(dtypes, backend, skipped)
    settings = _Settings(fn, weights_fn, layout, mask_arg, backend, fully_masked or "zero", fully_masked, max_ulp,
                         rtol, atol, lse, grads, backward_fn, softcap, sinks)
    tally = _Tally()

    if layout == "varlen":
        _run_varlen_cases(settings, tally, kinds, run_dtypes, grouped_query, fully_masked, zero_length, skipped)
        if examples:
            skipped.append("generated examples: layout varlen runs its catalogue only")
        return tally.report(skipped)

    for case in ATTENTION_CASES:
        why = _skip_reason(case, kinds, fully_masked, zero_length)
        if why:
            skipped.append(f"{case.id}: {why}")
            continue
        for dtype in run_dtypes:
            q, k, v, mask = _case_arrays(case, dtype, grouped_query)
            p = _Input(q, k, v, mask, dtype, f'catalogue case "{case.id}"', sinks=_sinks(settings, q))
            tally.record(dtype, _check_one(settings, p))
            tally.cases += 1

    if examples and run_dtypes:
        _run_examples(settings, tally, kinds, run_dtypes, examples, grouped_query, fully_masked is not None, seed)
    return tally.report(skipped)


def _check_mask_arg(mask_arg: str | None, *fns: Callable[..., Any] | None) -> None:
    """mask_arg is None or a parameter name that fn (and weights_fn) can take by keyword."""
    if mask_arg is None:
        return
    if not isinstance(mask_arg, str) or not mask_arg.isidentifier():
        raise ValueError(f"mask_arg must be None (the mask positional, after q, k, v) or the name of fn's mask "
                         f"keyword, such as 'mask'; got {mask_arg!r}")
    for fn in fns:
        if fn is None:
            continue
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue  # no signature to read (a builtin, a C extension): the call will tell
        kinds = {p.kind for p in parameters.values()}
        taken = mask_arg in parameters and parameters[mask_arg].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if not taken and inspect.Parameter.VAR_KEYWORD not in kinds:
            raise TypeError(f"mask_arg={mask_arg!r}: `{_fn_name(fn)}` takes no keyword {mask_arg!r} "
                            f"(its parameters: {', '.join(parameters) or 'none'})")


def _mask_arg_note(s: _Settings) -> str:
    """When fn got the mask positionally in a parameter not named for it, while another one is."""
    if s.mask_arg is not None:
        return ""
    try:
        parameters = list(inspect.signature(s.fn).parameters.values())
    except (TypeError, ValueError):
        return ""
    positional = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 4 or "mask" in positional[3].name.lower():
        return ""
    named = [p.name for p in parameters[4:] if "mask" in p.name.lower() and p.kind != inspect.Parameter.POSITIONAL_ONLY]
    if not named:
        return ""
    return (f"  note: the mask went in as fn's fourth argument, `{positional[3].name}`, and fn has a parameter "
            f"`{named[0]}`: if that is where the mask goes, pass mask_arg={named[0]!r}")


def _fn_args(s: _Settings, p: _Input, v: np.ndarray | None = None) -> tuple[list[Any], dict[str, Any]]:
    """fn's positional and keyword arguments for input p (v replaced when given), as NumPy values."""
    arrays = [to_layout(x, s.layout) for x in (p.q, p.k, p.v if v is None else v)]
    kwargs: dict[str, Any] = {}
    if s.softcap is not None:
        kwargs["softcap"] = s.softcap
    if p.sinks is not None:
        kwargs["sinks"] = p.sinks
    if p.varlen is not None:
        case = p.varlen
        cu_q, cu_k = case.cu_seqlens()
        kwargs["causal"] = case.causal
        if case.window is not None:
            kwargs["window_size"] = case.window
        return [*arrays, cu_q, cu_k, max(case.q_lengths, default=0), max(case.kv_lengths, default=0)], kwargs
    if s.mask_arg is None:
        return [*arrays, p.mask], kwargs
    return arrays, {s.mask_arg: p.mask, **kwargs}


def _weights_fn_args(s: _Settings, p: _Input) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = _fn_args(s, p)
    return ([args[0], args[1], args[3]], kwargs) if s.mask_arg is None else (args[:2], kwargs)


def _converted(x: Any, backend: str) -> Any:
    # Writable copies: fn may work in place, and must not change the arrays a report shows.
    return from_numpy(np.array(x, copy=True), backend) if isinstance(x, np.ndarray) else x


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


def _mask_is_fully_masked_somewhere(mask: np.ndarray | None) -> bool:
    return mask is not None and mask.shape[-1] > 0 and bool((~mask.any(axis=-1)).any())


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


def _sinks(s: _Settings, q: np.ndarray) -> np.ndarray | None:
    """(H,) sink logits in q's dtype, drawn from N(0, 1) by the number of heads (reproducible)."""
    if not s.sinks:
        return None
    return np.asarray(np.random.default_rng(q.shape[1]).standard_normal(q.shape[1])).astype(q.dtype)


def _varlen_skip_reason(case: VarlenCase, kinds: frozenset[str] | None, fully_masked: str | None,
                        zero_length: bool) -> str:
    if kinds is not None and not set(case.kinds) <= kinds:
        return "mask kind not in mask_kinds"
    if 0 in (case.total_q, case.total_k) and not zero_length:
        return "zero-length axis (zero_length=False)"
    if fully_masked is None and case.total_q and not case.mask().any(axis=-1).all():
        return "has fully-masked rows (fully_masked=None)"
    return ""


def _varlen_arrays(case: VarlenCase, dtype: str, grouped_query: bool) -> tuple[np.ndarray, ...]:
    """The packed batch as the oracle sees it: one batch item, (1, H, total, D), the mask (1, 1, T, S)."""
    a = case.arrays(dtype)
    q, k, v = (np.swapaxes(a[n], 0, 1)[None] for n in ("q", "k", "v"))
    if not grouped_query and case.kv_heads != case.heads:
        k, v = (np.repeat(x, case.heads // case.kv_heads, axis=1) for x in (k, v))
    return q, k, v, case.mask()[None, None]


def _run_varlen_cases(s: _Settings, tally: _Tally, kinds: frozenset[str] | None, dtypes: Sequence[str],
                      grouped_query: bool, fully_masked: str | None, zero_length: bool, skipped: list[str]) -> None:
    __tracebackhide__ = True
    for case in VARLEN_CASES:
        why = _varlen_skip_reason(case, kinds, fully_masked, zero_length)
        if why:
            skipped.append(f"{case.id}: {why}")
            continue
        for dtype in dtypes:
            q, k, v, mask = _varlen_arrays(case, dtype, grouped_query)
            window = "" if case.window is None else f", window_size={case.window}"
            detail = (f"  sequences: q lengths {list(case.q_lengths)}, k lengths {list(case.kv_lengths)}, "
                      f"causal={case.causal}{window} (bottom-right within each)")
            p = _Input(q, k, v, mask, dtype, f'varlen case "{case.id}"', detail, _sinks(s, q), case)
            tally.record(dtype, _check_one(s, p))
            tally.cases += 1


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _context(s: _Settings, fn: Callable[..., Any], p: _Input, what: str) -> str:
    shapes = ", ".join(f"{n} {shape_in(x.shape, s.layout)}" for n, x in (("q", p.q), ("k", p.k), ("v", p.v)))
    if p.varlen is None:
        shapes += f", mask {p.mask.shape} (scores layout (B, H, T, S), True = attend)"
    extras = "".join([f", softcap={s.softcap:g}" if s.softcap is not None else "",
                      f", sinks {p.sinks.tolist()}" if p.sinks is not None else ""])
    return "\n".join(
        [
            f"check_attention: `{_fn_name(fn)}` {what}",
            f"  input: {p.label}, dtype {p.dtype}, fully_masked={s.shown_policy!r}, layout {s.layout}, "
            f"backend {s.backend}{extras}",
            f"  shapes: {shapes}",
            *([p.detail] if p.detail else []),
        ]
    )


def _layout_note(s: _Settings, axes: str = "query, dim") -> str:
    if s.layout == "BHTD":
        return ""
    if s.layout == "varlen":
        return (f"  (indices below take the packed batch as one batch item, (batch=0, head, {axes}), a query or "
                "key index being its packed token's)")
    return f"  (indices below are (batch, head, {axes}) whatever the layout)"


def _draw_mask(mask: np.ndarray, index: tuple[int, ...] | None) -> str:
    """The (T, S) mask of the failing (batch, head) as rows of 1 (attend) and 0, when small."""
    if mask.shape[-1] > _DRAW_MASK_MAX or mask.shape[-2] > _DRAW_MASK_MAX or mask.size == 0 or mask.all():
        return ""
    b, h = (index[0], index[1]) if index is not None and len(index) >= 3 else (0, 0)
    mb, mh = (b if mask.shape[0] > 1 else 0), (h if mask.shape[1] > 1 else 0)
    rows = ["    " + " ".join("1" if x else "0" for x in row) for row in mask[mb, mh]]
    shared = " (one row, shared by every query)" if mask.shape[2] == 1 else ""
    return (f"  mask[batch={mb}, head={mh}] (rows = queries, columns = keys, 1 = attend){shared}:\n"
            + "\n".join(rows))


def _raised(s: _Settings, fn: Callable[..., Any], context: str, err: Exception) -> CheckError:
    note = _mask_arg_note(s) if fn is s.fn else ""
    raised = f"{context}\n  it raised {type(err).__name__}: {err}"
    return CheckError(f"{raised}\n{note}" if note else raised)


def _call(s: _Settings, fn: Callable[..., Any], args: tuple[list[Any], dict[str, Any]], context: str) -> Any:
    __tracebackhide__ = True
    positional, keywords = args
    try:
        return fn(*(_converted(x, s.backend) for x in positional),
                  **{n: _converted(x, s.backend) for n, x in keywords.items()})
    except Exception as err:
        raise _raised(s, fn, context, err) from err


def _as_array(s: _Settings, value: Any, context: str, what: str = "") -> np.ndarray:
    __tracebackhide__ = True
    try:
        return np.asarray(to_numpy(value))
    except Exception as err:
        raise CheckError(f"{context}\n  it returned {type(value).__name__}{what}, not an array of backend "
                         f"{s.backend!r}") from err


def _outputs(s: _Settings, result: Any, context: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(out, lse) from what fn returned: out alone, or (out, lse) with lse=True."""
    __tracebackhide__ = True
    if not s.lse:
        return _as_array(s, result, context), None
    if not isinstance(result, tuple | list) or len(result) != 2:
        got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, tuple | list) else \
            type(result).__name__
        raise CheckError(f"{context}\n  with lse=True fn must return (out, lse); it returned {got}")
    return _as_array(s, result[0], context, " as out"), _as_array(s, result[1], context, " as lse")


def _first(s: _Settings, result: Any) -> Any:
    return result[0] if s.lse and isinstance(result, tuple | list) else result


def _fail(context: str, err: AssertionError, mask: np.ndarray, note: str = "", diagnosis: str = "") -> CheckError:
    index = err.mismatch.index if isinstance(err, MismatchError) else None
    parts = [context, _draw_mask(mask, index), note, str(err), diagnosis]
    return CheckError("\n".join(p for p in parts if p))


def _probe_weights(s: _Settings, p: _Input, expected_w: np.ndarray) -> str:
    """Diagnosis of a wrong output: fn's weights, read by calling it with v = identity (Dv = S), so
    that its output is its weights; "" when fn cannot be called that way."""
    b, h_kv, s_len = p.k.shape[0], p.k.shape[1], p.k.shape[2]
    eye = np.broadcast_to(np.eye(s_len, dtype=p.q.dtype), (b, h_kv, s_len, s_len))
    try:
        result = _first(s, _call(s, s.fn, _fn_args(s, p, eye), ""))
        w = from_layout(np.asarray(to_numpy(result)), s.layout)
        assert_weights_close(w, expected_w, dtype=p.dtype, max_ulp=s.max_ulp, rtol=s.rtol, atol=s.atol, mask=p.mask)
    except MismatchError as err:
        report = str(err).replace("\n", "\n  ")
        return ("diagnosis: fn's weights, read as its output for v = identity (if out = weights @ v), "
                f"differ too:\n  {report}")
    except Exception:
        return ""
    return ("diagnosis: fn's weights, read as its output for v = identity, agree with the oracle's: "
            "the error is in the product with v")


def _extras(s: _Settings, p: _Input) -> dict[str, Any]:
    """The oracle's softcap and sinks arguments for input p."""
    return {"softcap": s.softcap, "sinks": p.sinks}


def _check_one(s: _Settings, p: _Input) -> _Errors:
    """Run fn (and weights_fn, the backward) on one input; raise CheckError, or return its errors."""
    __tracebackhide__ = True
    expected, expected_w, *rest = oracle.attention(p.q, p.k, p.v, p.mask, fully_masked=s.policy, return_weights=True,
                                                   return_lse=s.lse, **_extras(s, p))
    context = _context(s, s.fn, p, "disagrees with the oracle:")
    result = _call(s, s.fn, _fn_args(s, p), _context(s, s.fn, p, "failed to run"))
    out, lse = _outputs(s, result, context)
    want = shape_in(expected.shape, s.layout)
    if out.shape != want:
        raise CheckError(f"{context}\n  output shape {out.shape}, expected {want} ({s.layout}: {AXES[s.layout]}, Dv)")
    out = from_layout(out, s.layout)
    v_scale = float(np.abs(p.v.astype(np.float64)).max(initial=0.0))
    try:
        assert_attention_close(out, expected, dtype=p.dtype, max_ulp=s.max_ulp, scale=v_scale,
                               rtol=s.rtol, atol=s.atol, mask=p.mask, fully_masked=s.policy)
    except AssertionError as err:
        diagnosis = _probe_weights(s, p, expected_w) if s.weights_fn is None else ""
        note = "\n".join(n for n in (_layout_note(s), _mask_arg_note(s)) if n)
        raise _fail(context, err, p.mask, note, diagnosis) from None
    errors = _Errors(output_error(out, expected, scale=v_scale, mask=p.mask if s.policy == "zero" else None))
    if lse is not None:
        errors.lse = _check_lse(s, p, lse, rest[0])
    if s.weights_fn is not None:
        errors.weights = _check_weights(s, p, expected_w)
    if s.grads:
        errors.gradients = _check_gradients(s, p)
    return errors


def _check_lse(s: _Settings, p: _Input, lse: np.ndarray, expected: np.ndarray) -> float:
    __tracebackhide__ = True
    context = _context(s, s.fn, p, "returns an lse that disagrees with the oracle's:")
    want = lse_shape_in(expected.shape, s.layout)
    if lse.shape != want:
        raise CheckError(f"{context}\n  lse shape {lse.shape}, expected {want} ({s.layout}: {LSE_AXES[s.layout]})")
    lse = lse_from_layout(lse, s.layout)
    try:
        assert_lse_close(lse, expected, mask=p.mask)
    except AssertionError as err:
        raise _fail(context, err, p.mask, _layout_note(s, "query") if s.layout == "varlen" else "") from None
    return lse_error(lse, expected)


def _check_weights(s: _Settings, p: _Input, expected_w: np.ndarray) -> float:
    __tracebackhide__ = True
    assert s.weights_fn is not None
    context = _context(s, s.weights_fn, p, "disagrees with the oracle:")
    w = _as_array(s, _call(s, s.weights_fn, _weights_fn_args(s, p), _context(s, s.weights_fn, p, "failed to run")),
                  context)
    try:
        assert_weights_close(w, expected_w, dtype=p.dtype, max_ulp=s.max_ulp, rtol=s.rtol, atol=s.atol, mask=p.mask)
    except AssertionError as err:
        raise _fail(context, err, p.mask) from None
    return weights_error(w, expected_w, mask=p.mask)


def _gradient_names(p: _Input) -> list[str]:
    return ["dq", "dk", "dv"] + (["dsinks"] if p.sinks is not None else [])


def _user_gradients(s: _Settings, p: _Input, d_out: np.ndarray, context: str, failed: str) -> list[np.ndarray]:
    """fn's gradients of sum(d_out * out), (B, H, T, D) like the oracle's: by backward_fn or autodiff.
    context: a report's first lines; failed: those when the gradients could not be had."""
    __tracebackhide__ = True
    names = _gradient_names(p)
    positional, keywords = _fn_args(s, p)
    d_out_in = to_layout(d_out, s.layout)
    if s.backward_fn is not None:
        got = _call(s, s.backward_fn, ([*positional, d_out_in], keywords), failed)
        if not isinstance(got, tuple | list) or len(got) != len(names):
            kind = f"a {type(got).__name__} of {len(got)}" if isinstance(got, tuple | list) else type(got).__name__
            raise CheckError(f"{context}\n  backward_fn must return ({', '.join(names)}); it returned {kind}")
        grads: list[np.ndarray | None] = [_as_array(s, g, context, f" as {n}") for n, g in zip(names, got, strict=True)]
    else:
        rest = [_converted(x, s.backend) for x in positional[3:]]
        fixed = {n: _converted(x, s.backend) for n, x in keywords.items() if n != "sinks"}

        def forward(q: Any, k: Any, v: Any, *sinks: Any) -> Any:
            return _first(s, s.fn(q, k, v, *rest, **fixed, **({"sinks": sinks[0]} if sinks else {})))

        primals = positional[:3] + ([keywords["sinks"]] if "sinks" in keywords else [])
        try:
            grads = _autodiff.vjp(s.backend, forward, primals, d_out_in)
        except Exception as err:
            raise _raised(s, s.fn, failed, err) from err
    out: list[np.ndarray] = []
    for name, grad, primal in zip(names, grads, (p.q, p.k, p.v, p.sinks), strict=False):
        if grad is None:
            raise CheckError(f"{context}\n  {name}: {_autodiff.AUTODIFF[s.backend]} gave no gradient for "
                             f"{name[1:]}: fn's output does not depend on it through autodiff (detached?)")
        if name == "dsinks":
            out.append(grad)
            continue
        assert primal is not None
        want = shape_in(primal.shape, s.layout)
        if grad.shape != want:
            raise CheckError(f"{context}\n  {name} shape {grad.shape}, expected {want}, {name[1:]}'s ({s.layout})")
        out.append(from_layout(grad, s.layout))
    return out


def _empty_rows_note(p: _Input, err: AssertionError) -> str:
    """Why a gradient may be NaN (or not 0) here: rows with no kept key, sequences with no query."""
    if not isinstance(err, MismatchError):
        return ""
    notes = []
    if err.mismatch.kind.startswith("NaN") and p.mask.shape[-1] and not p.mask.any(axis=-1).all():
        notes.append("  note: this input has rows with no kept key, whose lse is -inf: a backward that recomputes "
                     "the weights as exp(s - lse) gets exp(-inf - (-inf)) = NaN there unless it takes them as 0")
    if p.varlen is not None and 0 in p.varlen.q_lengths:
        notes.append("  note: a sequence here has no query (seqlen_q = 0): its keys get no gradient, dk and dv "
                     "exactly 0 there")
    return "\n".join(notes)


def _check_gradients(s: _Settings, p: _Input) -> float:
    __tracebackhide__ = True
    shape = (*p.q.shape[:-1], p.v.shape[-1])
    d_out = np.asarray(np.random.default_rng(0).standard_normal(shape)).astype(p.q.dtype)
    if s.backward_fn is not None:
        by, what = s.backward_fn, "(backward_fn) gives gradients that"
    else:
        by, what = s.fn, f"has gradients by {_autodiff.AUTODIFF[s.backend]} that"
    context = _context(s, by, p, f"{what} disagree with the oracle's (refmask.attention_vjp):")
    context += "\n  d_out: N(0, 1) in q's dtype; the gradients are those of sum(d_out * out)"
    failed = _context(s, by, p, f"{what} could not be computed:" if s.backward_fn is None else "failed to run")
    args = (p.q, p.k, p.v, p.mask, d_out)
    expected = oracle.attention_vjp(*args, fully_masked=s.policy, **_extras(s, p))
    terms = attention_gradient_terms(*args, fully_masked=s.policy, **_extras(s, p))
    worst = 0.0
    for name, actual in zip(_gradient_names(p), _user_gradients(s, p, d_out, context, failed), strict=True):
        want, scale = getattr(expected, name), getattr(terms, name)
        try:
            assert_gradients_close(actual, want, terms=scale, name=name)
        except AssertionError as err:
            notes = "\n".join(n for n in (_layout_note(s, "query or key, dim"), _empty_rows_note(p, err)) if n)
            raise _fail(context, err, p.mask, notes) from None
        worst = max(worst, gradient_error(actual, want, terms=scale)[0])
    return worst


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
        p = _Input(q, k, v, mask, dtype, f"generated example {example.describe()}", example.values(), _sinks(s, q))
        tally.record(dtype, _check_one(s, p))

    check_generated_example()
    tally.examples = min(tally.examples, examples)
