"""Argument decisions shared by the oracle and every backend.

Each function decides on Python values, shapes and dtype *names*, never on a framework's arrays (array
arguments are parsed in refmask/_arrays.py, dtypes in refmask/_dtypes.py), and returns what it decided
or raises; so every backend accepts, refuses and answers alike, with the same message, for the same
input. Every message names the argument, what was received and what was expected.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

ALIGNS = ("top_left", "bottom_right")
SIDES = ("right", "left")
FULLY_MASKED_POLICIES = ("zero", "uniform", "nan")
SOFTMAX_ACCURACIES = ("fast", "accurate")
FILLS = ("min", "-inf")

CONVERTERS_HINT = (
    "refmask masks are boolean with True = may attend; convert other conventions explicitly with "
    "refmask.from_hf (1/0 Hugging Face attention_mask), refmask.from_multiplicative (1/0 mask, 1 = attend), "
    "refmask.from_additive (0 / large negative float mask) or refmask.from_torch_mha (True = masked)"
)


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def integer(name: str, value: object, *, minimum: int | None = None) -> int:
    """A Python or NumPy integer (not a bool), optionally at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def q_kv_lengths(q_len: object, kv_len: object) -> tuple[int, int]:
    """Query and key lengths of a (T, S) mask; kv_len defaults to q_len."""
    t = integer("q_len", q_len, minimum=0)
    s = t if kv_len is None else integer("kv_len", kv_len, minimum=0)
    return t, s


def align_shift(align: str, q_len: int, kv_len: int) -> int:
    """How far query i is moved right before it is compared with key positions.

    "top_left": query i sits at key position i (torch `is_causal`).
    "bottom_right": the last query sits at the last key, i.e. query i at i + kv_len - q_len
    (flash-attn, xformers `...FromBottomRight`, KV-cache decoding).
    """
    choice("align", align, ALIGNS)
    return 0 if align == "top_left" else kv_len - q_len


def flag(name: str, value: object) -> bool:
    """A bool argument (is_causal, return_weights): True or False, never a truthy string or number."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool (True or False); got {type(value).__name__} {value!r}")
    return bool(value)


def axis(axis: object, ndim: int) -> int:
    """The softmax axis of `ndim`-D scores as a negative index (it names the same axis of a mask with
    fewer dimensions); never wrapped, never a bool."""
    # type() first: isinstance against numbers.Integral is an ABC check, slow beside a small softmax
    if type(axis) is not int and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
        raise TypeError(f"axis must be an int; got {type(axis).__name__} {axis!r}")
    if ndim == 0:
        raise ValueError("scores must have at least one axis to normalise along; got a 0-d array (shape ())")
    a = int(axis)
    if not -ndim <= a < ndim:
        raise ValueError(f"axis must be in [-{ndim}, {ndim - 1}] for scores with {ndim} dimensions; got {a}")
    return a - ndim if a >= 0 else a


# ----------------------------------------------------------------------------------------------
# position masks on exact Python ints
#
# offset, window and chunk_size are Python ints of any size. Each mask compares key minus query
# positions, j - i in [-(T-1), S-1], with a shift; beyond that range the comparison no longer changes,
# so the shift is clamped here, exactly, and every backend builds its mask from small ints.


def diagonal(shift: int, q_len: int, kv_len: int) -> int:
    """`shift` clamped to [-q_len - 1, kv_len + 1]: `j - i <= shift` and `j - i >= shift` come out the same
    for every (i, j) of a (q_len, kv_len) grid, and the result fits any integer dtype a mask is built in."""
    return max(-q_len - 1, min(kv_len + 1, shift))


def aligned_offset(align: object, q_len: int, kv_len: int, offset: object) -> int:
    """offset + align's shift, exact: query i sits at key position i + aligned_offset."""
    return integer("offset", offset) + align_shift(align, q_len, kv_len)  # type: ignore[arg-type]


def chunks(shift: int, chunk_size: int, q_len: int, kv_len: int) -> tuple[int, int]:
    """(c, d), small, such that floor((i + d) / c) == floor(j / c) iff floor((i + shift) / chunk_size) ==
    floor(j / chunk_size) for every query i < q_len and key j < kv_len.

    With shift = q*chunk_size + r (0 <= r < chunk_size) the test reads floor((i + r) / chunk_size) + q ==
    floor(j / chunk_size). When chunk_size >= n = max(q_len, kv_len, 1), floor(j / chunk_size) is 0 and
    floor((i + r) / chunk_size) is 1 iff i >= chunk_size - r: chunk size n with the same threshold
    min(chunk_size - r, q_len) is the same test. Then q beyond the range of either floor matches nothing
    and is clamped to one past it.
    """
    c = chunk_size
    q, r = divmod(shift, c)
    n = max(q_len, kv_len, 1)
    if c > n:
        c, r = n, n - max(1, min(c - r, q_len))
    q = max(-((q_len - 1 + r) // c) - 1, min((kv_len - 1) // c + 1, q))
    return c, q * c + r


# ----------------------------------------------------------------------------------------------
# position masks on position arrays
#
# Per-example offsets and explicit positions are data (arrays, traceable), compared in each backend's
# integer dtype. Kept within [-2^30, 2^30), every difference of two positions fits int32 (jax without x64),
# and window sides and chunk sizes beyond 2^30 can be clamped to it exactly.

POSITION_LIMIT = 1 << 30


def positions_in_range(name: str, lo: int, hi: int) -> None:
    """Positions (given, or arange + offset) must lie in [-2^30, 2^30)."""
    if lo < -POSITION_LIMIT or hi >= POSITION_LIMIT:
        bad = lo if lo < -POSITION_LIMIT else hi
        raise ValueError(
            f"{name} gives the position {bad}, outside [-2**30, 2**30) where refmask compares positions exactly "
            "on every backend (an int offset= of any size is exact: pass one int for the whole batch)"
        )


def offsets_in_range(lo: int, hi: int, shift: int, q_len: int) -> None:
    """Per-example offsets place query i at i + shift + offset[b], which must lie in [-2^30, 2^30)."""
    if lo + shift < -POSITION_LIMIT or hi + shift + max(q_len - 1, 0) >= POSITION_LIMIT:
        bad = lo if lo + shift < -POSITION_LIMIT else hi
        raise ValueError(
            f"offset holds {bad}, which puts queries outside [-2**30, 2**30) where refmask compares per-example "
            "positions exactly on every backend (an int offset= of any size is exact: pass one int for the batch)"
        )


def position_lengths(
    q_len: object,
    kv_len: object,
    q_shape: tuple[int, ...] | None,
    kv_shape: tuple[int, ...] | None,
    align: object,
    offset: object,
) -> tuple[int, int]:
    """T and S of a mask built from q_positions / kv_positions (either may be None: arange then).

    A position array is (T,) or (B, T) ((S,) or (B, S)); its length is T (S), so a q_len / kv_len that
    says otherwise is refused, and so are align and offset, which only place arange query positions.
    """
    choice("align", align, ALIGNS)
    if align != "top_left" or isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset != 0:
        raise ValueError(
            f"align and offset place arange query positions; with q_positions or kv_positions give the positions "
            f"themselves (add the offset to them); got align={align!r}, offset={offset!r}"
        )
    for name, shape, meaning in (
        ("q_positions", q_shape, "(T,) or (B, T)"),
        ("kv_positions", kv_shape, "(S,) or (B, S)"),
    ):
        if shape is not None and len(shape) not in (1, 2):
            raise ValueError(f"{name} must have shape {meaning}; got shape {tuple(shape)}")
    if q_shape is not None and len(q_shape) == 2 and kv_shape is not None and len(kv_shape) == 2:
        same_batch("q_positions", q_shape, "kv_positions", kv_shape)
    t = _length_from("q_len", q_len, "q_positions", q_shape)
    default_s = None if kv_len is None else kv_len
    if kv_shape is None and default_s is None:
        default_s = t
    s = _length_from("kv_len", default_s, "kv_positions", kv_shape)
    return t, s


def _length_from(name: str, given: object, positions_name: str, shape: tuple[int, ...] | None) -> int:
    if shape is None:
        if given is None:
            raise TypeError(f"{name} is required unless {positions_name} is given")
        return integer(name, given, minimum=0)
    if given is not None and integer(name, given, minimum=0) != shape[-1]:
        raise ValueError(f"{name}={given} conflicts with {positions_name} of shape {tuple(shape)}: leave {name} out")
    return shape[-1]


def per_example_offset(shape: tuple[int, ...], q_len: object) -> None:
    """An offset array holds one offset per example: shape (B,)."""
    if q_len is None:
        raise TypeError("q_len is required unless q_positions is given")
    ndim("offset", shape, 1, "(B,) (one offset per example) or be an int")


def per_example_batch(name: str, batch: int, shapes: Sequence[tuple[int, ...]]) -> None:
    """Per-example arrays of one mask (prefix lengths, offsets, positions) must agree on B."""
    for shape in shapes:
        if len(shape) == 3 and shape[0] != batch:
            raise ValueError(
                f"{name} has {batch} examples but the offset or positions have {shape[0]}: give one per example"
            )


def position_window(window: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """Window sides for position arrays, clamped to 2^31 - 1 (beyond every difference of two positions)."""
    return tuple(None if w is None else min(w, 2 * POSITION_LIMIT - 1) for w in window)  # type: ignore[return-value]


def position_chunk(chunk_size: int) -> int:
    """A chunk size for position arrays, clamped to 2^30: every |position| is below it, so floor(p / c) is
    0 or -1 by p's sign alike for any larger c."""
    return min(chunk_size, POSITION_LIMIT)


def pad_id(value: object, dtype: str) -> int | None:
    """pad_id as an int, or None when no value of the ids' integer `dtype` can equal it (it matches nothing)."""
    value = integer("pad_id", value)
    info = np.iinfo(np.dtype(dtype))
    return value if info.min <= value <= info.max else None


def common_integer_dtype(names: Sequence[str], dtypes: Sequence[str]) -> str:
    """The integer dtype in which arrays of `dtypes` compare exactly (NumPy's promotion); uint64 beside a
    signed dtype has none (NumPy would compare in float64, which rounds ids above 2^53)."""
    common = np.result_type(*(np.dtype(d) for d in dtypes))
    if common.kind not in "iu":
        got = ", ".join(f"{n}: {d}" for n, d in zip(names, dtypes, strict=True))
        raise TypeError(f"{', '.join(names)} have no integer dtype that holds both exactly; got {got}: pass one dtype")
    return common.name


def index_dtype(max_len: int) -> str:
    """The integer dtype in which positions 0..max_len and lengths in [0, max_len] compare exactly."""
    return "int32" if max_len <= np.iinfo(np.int32).max else "int64"


def integers_fit(name: str, lo: int, hi: int, dtype: str) -> None:
    """Values lo..hi must be exact in `dtype` (the dtype a framework makes of them), never wrapped."""
    info = np.iinfo(np.dtype(dtype))
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise ValueError(
            f"{name} holds {bad}, outside the range of {dtype} [{info.min}, {info.max}] that this backend "
            "stores it in (jax without jax_enable_x64 has no 64-bit integers)"
        )


def window(window: object) -> tuple[int | None, int | None]:
    """`window=w` means (w, w); `window=(left, right)` keys on each side of the aligned query, either side
    None for unbounded on that side (None alone is refused: it would read as "no window")."""
    if isinstance(window, tuple | list) and len(window) == 2:
        left = None if window[0] is None else integer("window[0] (left)", window[0], minimum=0)
        right = None if window[1] is None else integer("window[1] (right)", window[1], minimum=0)
        return left, right
    if isinstance(window, numbers.Integral) and not isinstance(window, bool):
        w = integer("window", window, minimum=0)
        return w, w
    raise TypeError(
        f"window must be an int w or a pair (left, right) of ints >= 0 or None (unbounded); got {window!r}"
    )


def window_diagonals(shift: int, window: tuple[int | None, int | None], q_len: int, kv_len: int) -> tuple[int, int]:
    """(lo, hi), small, such that lo <= j - i <= hi is the window around query i's aligned position i + shift
    on a (q_len, kv_len) grid; an unbounded side is the diagonal beyond every key."""
    left, right = window
    lo = -q_len - 1 if left is None else diagonal(shift - left, q_len, kv_len)
    hi = kv_len + 1 if right is None else diagonal(shift + right, q_len, kv_len)
    return lo, hi


def ndim(name: str, shape: tuple[int, ...], ndim: int, meaning: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"{name} must have shape {meaning} ({ndim}-D); got shape {tuple(shape)}")


def broadcasts_to(name: str, mask_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    """The mask must broadcast to the scores' shape without changing it.

    Broadcasting aligns trailing axes, so a (B, S) key-padding mask would be read as (T, S);
    the error says how to build the (B, 1, 1, S) form instead.
    """
    mask_shape, target_shape = tuple(mask_shape), tuple(target_shape)
    fits = mask_shape == target_shape or (
        len(mask_shape) <= len(target_shape)
        and all(m in (1, t) for m, t in zip(mask_shape[::-1], target_shape[::-1], strict=False))
    )
    if not fits:
        raise ValueError(
            f"{name} of shape {mask_shape} does not broadcast to the scores' shape {target_shape} "
            "(..., T, S). Build masks at a broadcastable shape: (T, S) for causal-like masks, "
            "(B, 1, 1, S) for key padding (refmask.attention_padding_mask turns a (B, S) validity "
            "array into it)"
        )


def same_batch(name_a: str, shape_a: tuple[int, ...], name_b: str, shape_b: tuple[int, ...]) -> None:
    if shape_a[0] != shape_b[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size; got shapes {tuple(shape_a)} and {tuple(shape_b)}"
        )


def lengths_in_range(name: str, lo: int, hi: int, max_len: int) -> None:
    """Lengths are counts of real tokens: 0 <= length <= max_len (nothing is clipped)."""
    if lo < 0:
        raise ValueError(f"{name} must be >= 0; got a length of {lo}")
    if hi > max_len:
        raise ValueError(f"{name} must be <= max_len={max_len}; got a length of {hi}")


def attention_shapes(
    q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """Check q (..., H, T, D), k (..., H_kv, S, D), v (..., H_kv, S, Dv); return the scores' shape.

    Grouped-query attention: H must be a multiple of H_kv; query head h uses key/value head
    h // (H // H_kv), as SDPA with enable_gqa=True.
    """
    q_shape, k_shape = tuple(q_shape), tuple(k_shape)
    if len(q_shape) < 2 or len(k_shape) != len(q_shape):
        raise ValueError(
            f"q and k must have the same number of dimensions, at least 2 ((..., H, T, D) and "
            f"(..., H_kv, S, D)); got shapes {q_shape} and {k_shape}"
        )
    if q_shape[-1] != k_shape[-1]:
        raise ValueError(
            f"q and k must have the same head dimension D (last axis); got shapes {q_shape} and {k_shape}"
        )
    if len(q_shape) >= 3:
        if q_shape[:-3] != k_shape[:-3]:
            raise ValueError(
                f"q and k must have the same batch dimensions (..., in (..., H, T, D)); "
                f"got shapes {q_shape} and {k_shape}"
            )
        h, h_kv = q_shape[-3], k_shape[-3]
        if h_kv == 0 or h % h_kv != 0:
            raise ValueError(
                f"the number of query heads H={h} must be a multiple of the number of key/value "
                f"heads H_kv={h_kv} (q shape {q_shape}, k shape {k_shape})"
            )
    if v_shape is not None:
        v_shape = tuple(v_shape)
        if len(v_shape) != len(k_shape) or v_shape[:-1] != k_shape[:-1]:
            raise ValueError(
                f"v must have shape (..., H_kv, S, Dv) matching k {k_shape} in all but the last axis; "
                f"got {v_shape}"
            )
    return (*q_shape[:-1], k_shape[-2])


def mha_attn_mask_heads(shape: tuple[int, ...], num_heads: object) -> int | None:
    """nn.MultiheadAttention's attn_mask: None for (T, S); for (N*H, T, S) the H to split off."""
    shape = tuple(shape)
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        raise ValueError(f"attn_mask must have shape (T, S) or (N*num_heads, T, S); got {shape}")
    if num_heads is None:
        raise ValueError(f"attn_mask of shape {shape} is (N*num_heads, T, S): pass num_heads= to split it")
    heads = integer("num_heads", num_heads, minimum=1)
    if shape[0] % heads:
        raise ValueError(f"attn_mask's first axis ({shape[0]}) must be a multiple of num_heads={heads}")
    return heads


def mha_key_padding_mask(shape: tuple[int, ...]) -> None:
    if len(shape) not in (1, 2):
        raise ValueError(f"key_padding_mask must have shape (N, S) or (S,); got {tuple(shape)}")


def torch_mha_form(
    shape: tuple[int, ...], num_heads: object, q_len: object
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Which nn.MultiheadAttention argument a canonical mask of `shape` becomes (to_torch_mha).

    Returns (argument, broadcast shape, final shape): (T, S) -> attn_mask (T, S) (T' = 1 broadcast
    to q_len); (B, 1, 1, S) without q_len -> key_padding_mask (B, S); any other (B, H', T', S) ->
    attn_mask (B*num_heads, T, S), H' = 1 broadcast to num_heads and T' = 1 to q_len.
    """
    shape = tuple(shape)
    if len(shape) == 2:
        t = shape[0] if q_len is None else integer("q_len", q_len, minimum=0)
        broadcasts_to("mask", shape, (t, shape[1]))
        return "attn_mask", (t, shape[1]), (t, shape[1])
    if len(shape) == 4 and shape[1] == 1 and shape[2] == 1 and q_len is None:
        return "key_padding_mask", shape, (shape[0], shape[3])
    if len(shape) != 4:
        raise ValueError(f"mask must have shape (T, S) or (B, H, T, S); got {shape}")
    if num_heads is None:
        raise ValueError(f"a mask of shape {shape} becomes a (B*num_heads, T, S) attn_mask: pass num_heads=")
    heads = integer("num_heads", num_heads, minimum=1)
    t = shape[2] if q_len is None else integer("q_len", q_len, minimum=0)
    b, _, _, s = shape
    broadcasts_to("mask", shape, (b, heads, t, s))
    return "attn_mask", (b, heads, t, s), (b * heads, t, s)


def masks_broadcast(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape masks combined by and_masks / or_masks broadcast to; a ValueError naming them if none."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        got = ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"masks must broadcast to one shape; got {got}") from None


# ----------------------------------------------------------------------------------------------
# sinks and ALiBi


def sinks_shape(got: tuple[int, ...], scores_shape: tuple[int, ...], axis: int = -1) -> tuple[int, ...]:
    """The shape sinks of shape `got` take beside scores of `scores_shape` normalised along negative `axis`:
    the scores' shape with that axis of size 1 (one logit per row).

    Sinks broadcast to the rows, the scores' shape without `axis` ((..., H, T) for attention's (..., H, T, S));
    when the scores have a head axis (at least 3 axes, normalised along the last), a 1-D sinks is one logit
    per query head, (H,), read as (H, 1) (one logit per query row along T is (1, T) or (H, T)).
    """
    got, scores_shape = tuple(got), tuple(scores_shape)
    n = len(scores_shape)
    a = axis % n
    rows = (*scores_shape[:a], *scores_shape[a + 1 :])
    per_head = len(got) == 1 and n >= 3 and a == n - 1
    if per_head:
        if got[0] not in (1, scores_shape[-3]):
            raise ValueError(
                f"sinks of shape {got} is one logit per query head: it must have shape (H,) = ({scores_shape[-3]},) "
                f"for scores of shape {scores_shape} (..., H, T, S); for one logit per query row pass shape "
                f"(1, T) or (H, T)"
            )
        effective: tuple[int, ...] = (got[0], 1)
    else:
        effective = got
    fits = len(effective) <= len(rows) and all(
        g in (1, r) for g, r in zip(effective[::-1], rows[::-1], strict=False)
    )
    if not fits:
        raise ValueError(
            f"sinks of shape {got} does not broadcast to the rows {rows} (the scores' shape {scores_shape} without "
            f"the softmax axis): pass one logit per query head, (H,), or an array broadcastable to the rows"
        )
    padded = (1,) * (len(rows) - len(effective)) + effective
    return (*padded[:a], 1, *padded[a:])


# 2**53: every integer up to it is exact in float64, so ALiBi's distances j - i' are exact.
EXACT_POSITIONS = 2**53


def alibi_bias_args(
    num_heads: object, q_len: object, kv_len: object, align: object, offset: object
) -> tuple[int, int, int, int]:
    """alibi_bias's (H, T, S, d): query i sits at i + d (offset plus align's shift), its distances exact."""
    h = integer("num_heads", num_heads, minimum=1)
    t, s = q_kv_lengths(q_len, kv_len)
    d = aligned_offset(align, t, s, offset)
    alibi_distances(d, t, s)
    return h, t, s, d


def alibi_distances(shift: int, q_len: int, kv_len: int) -> tuple[int, int]:
    """The range (lo, hi) of the distances j - i' = j - i - shift on a (q_len, kv_len) grid, refused (naming
    offset) beyond 2**53, where float64 no longer holds every integer."""
    if q_len == 0 or kv_len == 0:
        return 0, 0
    lo, hi = -(q_len - 1) - shift, (kv_len - 1) - shift
    if max(abs(lo), abs(hi)) > EXACT_POSITIONS:
        raise ValueError(
            f"offset puts queries {max(abs(lo), abs(hi))} positions from keys (offset plus align's shift: "
            f"{shift}): ALiBi distances are computed exactly in float64, up to 2**53"
        )
    return lo, hi


# ----------------------------------------------------------------------------------------------
# varlen batches: flash-attn's packed layout (cu_seqlens) and Hugging Face's position ids
#
# Values these decisions need (a first entry, the first decrease, a total) are read by refmask/_arrays.py
# where they can be read; under tracing (jax.jit, torch.compile) they are skipped, and a result whose
# shape would depend on them needs its size passed as an int (or is refused, naming the argument).

INT32_MAX = int(np.iinfo(np.int32).max)


def sequence_lengths(name: str, lo: int, total: int) -> None:
    """Lengths of packed sequences: counts (>= 0) whose sum, the packed batch's size, fits int32, the dtype
    of cu_seqlens (flash-attn's varlen functions take int32)."""
    if lo < 0:
        raise ValueError(f"{name} must be >= 0; got a length of {lo}")
    if total > INT32_MAX:
        raise ValueError(
            f"{name} sum to {total} tokens, beyond int32's {INT32_MAX}: cu_seqlens are int32 (flash-attn's "
            "convention), so one packed batch holds at most that many tokens"
        )


def cu_seqlens_shape(name: str, shape: tuple[int, ...]) -> None:
    """cu_seqlens is 1-D (B + 1,): it holds at least its leading 0."""
    ndim(name, shape, 1, "(B + 1,)")
    if shape[0] == 0:
        raise ValueError(f"{name} must hold at least its leading 0 (shape (B + 1,), B sequences); got shape (0,)")


def cu_seqlens_values(name: str, first: int, drop: tuple[int, int, int] | None) -> None:
    """cu_seqlens starts at 0 and never decreases: sequence b holds tokens cu[b] .. cu[b + 1] - 1.

    drop: (b, cu[b - 1], cu[b]) for the first b where it decreases, or None.
    """
    if first != 0:
        raise ValueError(f"{name} must start at 0 (cumulative sequence lengths); got {name}[0] = {first}")
    if drop is not None:
        at, before, after = drop
        raise ValueError(
            f"{name} must be non-decreasing (sequence b holds tokens {name}[b] .. {name}[b + 1] - 1); "
            f"got {name}[{at}] = {after} < {name}[{at - 1}] = {before}"
        )


def same_sequences(name_a: str, shape_a: tuple[int, ...], name_b: str, shape_b: tuple[int, ...]) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"{name_a} and {name_b} must describe the same number of sequences (both (B + 1,)); "
            f"got shapes {tuple(shape_a)} and {tuple(shape_b)}"
        )


def traced(name: str, instead: str) -> TypeError:
    """The error for values that set a result's shape but cannot be read (jax.jit, vmap, torch.compile)."""
    return TypeError(
        f"{name}'s values set the shape of the result, and they cannot be read while tracing "
        f"(jax.jit, jax.vmap, torch.compile): {instead}"
    )


def packed_total(name: str, total_name: str, total: object, last: int | None) -> int | None:
    """The number of packed tokens a result spans: `total` when given (>= last, the tokens cu_seqlens packs;
    those beyond it are padding), else `last` (None: unreadable, refused by the caller)."""
    if total is None:
        return last
    n = integer(total_name, total, minimum=0)
    if last is not None and n < last:
        raise ValueError(f"{total_name}={n} is less than {name}[-1] = {last}, the number of tokens {name} packs")
    return n


def varlen_bounds(causal: object, window_value: object, total_q: int, total_k: int) -> tuple[int, int]:
    """(lo, hi): varlen_mask keeps query p and key q of one sequence iff lo <= (q - p) - (len_k - len_q) <= hi.

    That difference lies in [1 - len_k, len_q - 1], inside [-total_k, total_q]: a side beyond it (None,
    or a huge int) is clamped to one past it, exactly. causal caps the right side at 0, as flash-attn does.
    """
    is_causal = flag("causal", causal)
    left, right = (None, None) if window_value is None else window(window_value)
    lo = -(total_k + 1) if left is None else -min(left, total_k + 1)
    hi = total_q + 1 if right is None else min(right, total_q + 1)
    return lo, min(hi, 0) if is_causal else hi


def segment_id_values(
    name: str, lo: int, padding_then_real: int | None, drop: tuple[int, int, int] | None
) -> None:
    """Packed segment ids: >= 0 for real tokens, non-decreasing (each sequence's tokens contiguous), -1 for
    padding, only after every real token. padding_then_real: the first real token after a -1, or None;
    drop: (t, ids[t - 1], ids[t]) at the first decrease among real tokens, or None."""
    if lo < -1:
        raise ValueError(f"{name} must be >= 0 (a sequence index) or -1 (padding); got {lo}")
    if padding_then_real is not None:
        raise ValueError(
            f"{name} holds padding (-1) before a real token (at {padding_then_real}): padding goes after every "
            "sequence, as in the packed layout"
        )
    if drop is not None:
        at, before, after = drop
        raise ValueError(
            f"{name} must be non-decreasing, each sequence's tokens contiguous; got {name}[{at}] = {after} "
            f"after {name}[{at - 1}] = {before}"
        )


def num_segments(value: object, needed: int | None) -> int | None:
    """The number of sequences B: num_segments when given (at least `needed`, the largest id + 1), else
    `needed` (0 without a real token); None when neither is known (ids unreadable under tracing)."""
    if value is None:
        return needed
    n = integer("num_segments", value, minimum=0)
    if needed is not None and n < needed:
        raise ValueError(f"num_segments={n} is too small for segment id {needed - 1}: it must be at least {needed}")
    return n


def unpad_shapes(x_shape: tuple[int, ...], valid_shape: tuple[int, ...]) -> None:
    """unpad's x (B, L, ...) and valid (B, L)."""
    ndim("valid", valid_shape, 2, "(B, L)")
    if len(x_shape) < 2 or tuple(x_shape[:2]) != tuple(valid_shape):
        raise ValueError(
            f"x must have shape (B, L, ...) with valid's (B, L) = {tuple(valid_shape)} in front; got shape "
            f"{tuple(x_shape)}"
        )


def pad_shapes(packed_shape: tuple[int, ...], indices_shape: tuple[int, ...]) -> None:
    """pad's packed (total, ...) and indices (total,)."""
    ndim("indices", indices_shape, 1, "(total,)")
    if len(packed_shape) < 1 or packed_shape[0] != indices_shape[0]:
        raise ValueError(
            f"packed must have shape (total, ...) with one row per index, total = {indices_shape[0]}; got shape "
            f"{tuple(packed_shape)}"
        )


def pad_indices(lo: int, hi: int, distinct: bool, batch: int, max_len: int) -> None:
    """Flat indices into the (batch, max_len) layout: each in [0, batch * max_len), none twice."""
    size = batch * max_len
    if lo < 0 or hi >= size:
        raise ValueError(
            f"indices must lie in [0, batch * max_len) = [0, {size}) (batch={batch}, max_len={max_len}); got "
            f"{lo if lo < 0 else hi}: batch and max_len must be those of the (B, L) layout the indices index "
            "(unpad's valid.shape)"
        )
    if not distinct:
        raise ValueError("indices must be distinct: two packed rows cannot go to one position")
