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
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
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


def window(window: object) -> tuple[int, int]:
    """`window=w` means (w, w); `window=(left, right)` keys on each side of the aligned query."""
    if isinstance(window, tuple | list) and len(window) == 2:
        left = integer("window[0] (left)", window[0], minimum=0)
        right = integer("window[1] (right)", window[1], minimum=0)
        return left, right
    if isinstance(window, numbers.Integral) and not isinstance(window, bool):
        w = integer("window", window, minimum=0)
        return w, w
    raise TypeError(f"window must be an int w or a pair (left, right) of ints >= 0; got {window!r}")


def ndim(name: str, shape: tuple[int, ...], ndim: int, meaning: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"{name} must have shape {meaning} ({ndim}-D); got shape {tuple(shape)}")


def broadcasts_to(name: str, mask_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    """The mask must broadcast to the scores' shape without changing it.

    Broadcasting aligns trailing axes, so a (B, S) key-padding mask would be read as (T, S);
    the error says how to build the (B, 1, 1, S) form instead.
    """
    mask_shape, target_shape = tuple(mask_shape), tuple(target_shape)
    fits = len(mask_shape) <= len(target_shape) and all(
        m in (1, t) for m, t in zip(mask_shape[::-1], target_shape[::-1], strict=False)
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
