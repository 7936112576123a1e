"""Where one cell's native result differs from the oracle, entry by entry: `refmask compare --draw`.

Each entry of the path's weights (query i x key j), output (query i x dim d) and, on a gradients case,
dq (query i x dim d), dk and dv (key j x dim d) is held to the same tolerance the matrix uses
(refmask.testing's assert_weights_close / assert_attention_close / assert_gradients_close with their
default per-dtype bounds: the same NaNs, the same exact zeros for weights, values within the ULP bound,
a gradient relative to the magnitude of its terms), under the fully_masked policy (and, for T != S
causal cases, the alignment) that leaves the fewest entries beyond it. One grid is drawn per (batch,
head) that has such an entry.
"""

from __future__ import annotations

import numpy as np

from refmask import _show
from refmask.testing import tolerances as tol
from refmask.testing import ulp_distance
from refmask.testing._assert import _gradient_bounds

from .._base import Native, NotExpressible, Path
from ..cases import Case
from .cell import POLICIES
from .reference import GRAD_NAMES, attention, gradients

# Categories of an entry: masked within tolerance, kept within, kept beyond, masked beyond.
MASKED, AGREES, DIFFERS, MASKED_DIFFERS = 0, 1, 2, 3


def palette(ascii: bool = False) -> _show.Palette:
    """The glyphs of refmask.testing's report grid: "." agrees, "x" differs, "-" masked, "!" masked, differs;
    a block shows its worst entry."""
    blocks = tuple("" if bits == 0 else "!" if bits & 8 else "x" if bits & 4 else "." if bits & 2 else "-"
                   for bits in range(16))
    legend = ". within tolerance   x beyond it (or NaN where the oracle has none)   - masked   ! masked, beyond"
    return _show.Palette((" -", " .", " x", " !"), blocks, legend,
                         "each block shows its worst entry: " + legend)


def weights_beyond(got: np.ndarray, want: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Entries of weights assert_weights_close(got, want, mask=keep) rejects: a NaN in one only, an exact
    0 in one only, or more ULPs apart than tolerances.ATTENTION_WEIGHTS_MAX_ULP allows, leaving out
    pairs both below the flush-to-zero bound where the mask does not decide the value."""
    a, e = got, want.astype(got.dtype)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    decides = ~keep | ~keep.any(axis=-1, keepdims=True)
    flushed = tol.subnormals_agree(a, e) & ~decides
    nan = np.isnan(a64) != np.isnan(e64)
    zero = ((a64 == 0) != (e64 == 0)) & ~flushed
    ulp = ulp_distance(a, e)
    beyond = np.nan_to_num(ulp, nan=0.0) > tol.tolerance(tol.ATTENTION_WEIGHTS_MAX_ULP, a.dtype)
    return nan | zero | (beyond & ~flushed)


def output_beyond(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Entries of the output assert_attention_close(got, want) rejects: a NaN in one only, or
    |got - want| beyond ATTENTION_OUTPUT_MAX_ULP * eps * max|want| (and the flush allowance)."""
    a, e = got, want.astype(got.dtype)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    finite = np.abs(e64[np.isfinite(e64)])
    ref = float(finite.max()) if finite.size else 0.0
    allowed = max(tol.tolerance(tol.ATTENTION_OUTPUT_MAX_ULP, a.dtype) * tol.eps(a.dtype) * ref,
                  tol.output_flush_allowance(a.dtype))
    skip = np.isnan(e64) | tol.subnormals_agree(a, e)
    with np.errstate(invalid="ignore"):
        diff = np.where(a64 == e64, 0.0, np.nan_to_num(np.abs(a64 - e64), nan=np.inf))  # equal infinities agree
        beyond = np.where(skip, False, diff > allowed)
    return (np.isnan(a64) != np.isnan(e64)) | beyond


def gradient_beyond(got: np.ndarray, want: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Entries of a gradient assert_gradients_close(got, want, terms=terms) rejects: a NaN in one only, or
    |got - want| beyond GRADIENT_MAX_ULP * eps * terms (plus the allowance; exactly where terms are 0)."""
    a, e = got, want.astype(got.dtype)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    _, allowed, _ = _gradient_bounds(a, e64, terms, None, None, None)
    with np.errstate(invalid="ignore"):
        diff = np.where(a64 == e64, 0.0, np.nan_to_num(np.abs(a64 - e64), nan=np.inf))  # equal infinities agree
        excess = np.where(np.isnan(e64), -np.inf, diff - allowed)
    return (np.isnan(a64) != np.isnan(e64)) | (excess > 0)


# What a drawn array's rows and columns are.
_AXES = {"weights": (("query", "i"), "key j"), "output": (("query", "i"), "dim d"),
         "dq": (("query", "i"), "dim d"), "dk": (("key", "j"), "dim d"), "dv": (("key", "j"), "dim d")}


def _closest(native: Native, case: Case, q, k, v) -> tuple[str, str, np.ndarray, dict[str, tuple]]:
    """The (alignment label, policy) leaving the fewest entries beyond tolerance, its mask, and for each
    returned array (name -> (native, oracle, beyond))."""
    best = None
    for label, mask in case.masks.items():
        keep = np.broadcast_to(mask, case.shape)
        for policy in POLICIES:
            out, weights = attention(case, q, k, v, mask, policy)
            found = {}
            if native.weights is not None:
                found["weights"] = (native.weights, weights, weights_beyond(native.weights, weights, keep))
            if native.output is not None:
                found["output"] = (native.output, out, output_beyond(native.output, out))
            if case.d_out is not None and native.grads is not None:
                grads, terms = gradients(case, q, k, v, mask, policy)
                for name, got, want, t in zip(GRAD_NAMES, native.grads, grads, terms, strict=True):
                    found[name] = (got, want, gradient_beyond(got, want, t))
            # The fewest entries beyond tolerance, then the smallest error (as the matrix's note reports it).
            count = sum(int(x[2].sum()) for x in found.values())
            score = (count, max((_error(a, e) for a, e, _ in found.values()), default=0.0))
            if best is None or score < best[0]:
                best = (score, label, policy, keep, found)
    assert best is not None
    return best[1], best[2], best[3], best[4]


def _error(a: np.ndarray, e: np.ndarray) -> float:
    """max |a - e| (inf where one is NaN and the other not)."""
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    if (np.isnan(a64) != np.isnan(e64)).any():
        return float("inf")
    return float(np.abs(np.where(np.isnan(e64), 0.0, a64 - e64)).max(initial=0.0))


def _max_abs(a: np.ndarray, e: np.ndarray) -> str:
    error = _error(a, e)
    return "NaN" if error == float("inf") else f"{error:.3g}"


def draw_cell(path: Path, case: Case, *, width: int | None = None, ascii: bool = False) -> str:
    """The text `refmask compare --path P --case C --draw` prints under the table."""
    width = width or _show.terminal_width()
    head = f"{path.id} × {case.id}"
    lacks = sorted(case.features() - path.features)
    if lacks:
        return f"{head}: not drawn: the path lacks {', '.join(lacks)}\n"
    try:
        with np.errstate(all="ignore"):
            native = path.fn(case)
    except NotExpressible as err:
        return f"{head}: not drawn: the path cannot express the case ({err})\n"
    except Exception as err:  # the table already records it as ERR
        return f"{head}: not drawn: the native call raised {type(err).__name__}: {err}\n"
    q, k, v = native.qkv or (case.q, case.k, case.v)
    with np.errstate(all="ignore"):
        label, policy, keep, found = _closest(native, case, q, k, v)
    closest = f"fully_masked={policy!r}" + (f", {label} alignment" if label else "")
    lines: list[str] = []
    for name, (got, want, beyond) in found.items():
        n, total = int(beyond.sum()), beyond.size
        rows_are, cols_are = _AXES[name]
        what = f"{' '.join(rows_are)} x {cols_are}"
        lines += _show.wrap(f"{head}: {n} of {total} entries of the {name} ({what}) beyond tolerance, against the "
                            f"oracle under {closest}", width)
        if n == 0:
            lines.append("")
            continue
        # Queries that see no key are marked "(no key)"; the rows of dk and dv are keys, left unmarked.
        empty_rows = np.asarray(~keep.any(axis=-1)) if rows_are[0] == "query" else np.zeros(beyond.shape[:3], bool)
        panels, clean = [], []
        for b, h in np.ndindex(beyond.shape[:2]):
            bad = beyond[b, h]
            if not bad.any():
                clean.append(f"({b}, {h})")
                continue
            if name == "weights":
                masked = ~keep[b, h]
                cats = np.where(bad, np.where(masked, MASKED_DIFFERS, DIFFERS), np.where(masked, MASKED, AGREES))
            else:
                cats = np.where(bad, DIFFERS, AGREES)
            title = (f"batch {b}, head {h} ({int(bad.sum())} of {bad.size} beyond; "
                     f"max |native - oracle| {_max_abs(got[b, h], want[b, h])})")
            panels.append((title, cats.astype(np.int8), [empty_rows[b, h]]))
        lines.append("")
        cols = cols_are
        units = ("queries" if rows_are[0] == "query" else "keys", "keys" if cols_are == "key j" else "dims")
        lines += _show.draw_panels(panels, palette(ascii), width=width, rows=rows_are, cols=cols,
                                   units=units, ascii=ascii)
        if clean:
            lines += _show.wrap("within tolerance in every entry: (batch, head) " + ", ".join(clean), width, "  ")
        lines.append("")
    return "\n".join(lines)
