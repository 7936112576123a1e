"""The case families of the conformance matrix: small attention problems shared by every adapter.

A case holds q, k, v (NumPy, (B, H, T, D) / (B, H, S, D), in the case's dtype), the canonical
refmask mask (True = attend, broadcastable to (B, H, T, S)) built by the oracle, and a `Spec`: the
same mask described by its structure (causal alignment, window, lengths, segment ids), for the
native paths that take structure (`is_causal=True`, `key_value_seq_lengths=`, ...) rather than a
mask. Everything is drawn from fixed seeds, so the matrix is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refmask import oracle
from refmask._dtypes import numpy_dtype


@dataclass(frozen=True)
class Spec:
    """The structure of a case's mask; every present part is and-ed.

    causal: None, "top_left", "bottom_right", or "either" (T != S cases where the path's own
    alignment is reported rather than imposed: the case then has one expected mask per alignment).
    window: (left, right) sliding window around the (top-left aligned) query position.
    kv_lengths / q_lengths: per-batch lengths of valid keys / queries, padding on `side`.
    segments: (B, T) segment ids of packed sequences (self-attention, T = S).
    offset: per-example KV-cache offsets (B,), with causal="top_left": query i of example b sits at
    position offset[b] + i, so it sees keys j <= offset[b] + i (decoding into a cache of S slots).
    prefix: with causal="top_left", a prefix LM: every query also sees keys j < prefix (the prefix,
    bidirectional; one length for the batch), refmask.prefix_lm_mask.
    dilation: with a window, a dilated window: only keys whose distance i - j is a multiple of dilation
    (Longformer's dilated sliding window; refmask has no constructor for it, the case states it).
    chunk: chunked attention, keys in the query's chunk of `chunk` positions (counted from position 0)
    only, refmask.chunked_mask; with causal, Llama 4's chunked causal attention.
    """

    causal: str | None = None
    window: tuple[int, int] | None = None
    kv_lengths: tuple[int, ...] | None = None
    q_lengths: tuple[int, ...] | None = None
    side: str = "right"
    segments: tuple[tuple[int, ...], ...] | None = None
    offset: tuple[int, ...] | None = None
    prefix: int | None = None
    dilation: int | None = None
    chunk: int | None = None

    def parts(self) -> set[str]:
        """Names of the structural parts present: {"causal", "window", "kv_lengths", ...}."""
        names = ("causal", "window", "kv_lengths", "q_lengths", "segments", "offset", "prefix", "dilation",
                 "chunk")
        return {n for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Case:
    """One column of the matrix."""

    id: str
    title: str
    dtype: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    spec: Spec
    masks: dict[str, np.ndarray]  # label -> canonical mask; the first is the one mask-taking paths get
    poison: str | None = None  # "nan" / "inf": what the scores hold at masked positions
    notes: str = ""
    softcap: float | None = None  # scores s -> softcap * tanh(s / softcap), after scaling, before masking
    sinks: np.ndarray | None = None  # (H,) float32 sink logits: one extra column in each row's softmax
    d_out: np.ndarray | None = None  # (B, H, T, D): a "grad" case's cotangent of the output
    fill_dtype: str | None = None  # paths taking an additive mask build it in this dtype, then cast up
    bias: np.ndarray | None = None  # (H, T, S) float32 score bias (ALiBi), added after softcap, before masking
    # Other readings of the bias, by what they are ("label" -> (H, T, S)): a path that differs is checked
    # against each, so its cell can say which one it adds.
    bias_variants: dict[str, np.ndarray] = field(default_factory=dict)

    def features(self) -> set[str]:
        """The kernel features the case needs beyond a mask: {"softcap", "sinks", "grad", "bias"} or fewer."""
        wanted = {"softcap": self.softcap, "sinks": self.sinks, "grad": self.d_out, "bias": self.bias}
        return {name for name, value in wanted.items() if value is not None}

    @property
    def mask(self) -> np.ndarray:
        return next(iter(self.masks.values()))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, h, t, _ = self.q.shape
        return b, h, t, self.k.shape[2]


def _mask_from_spec(spec: Spec, b: int, t: int, s: int, align: str | None = None) -> np.ndarray:
    parts: list[np.ndarray] = [np.ones((1, 1, t, s), bool)]
    if spec.prefix is not None:  # causal with the prefix or-ed in, at the cache offsets if any
        offset = 0 if spec.offset is None else np.array(spec.offset)
        parts.append(oracle.prefix_lm_mask(np.full(b, spec.prefix), t, s, align=align or spec.causal or "top_left",
                                           offset=offset))
    elif spec.offset is not None:
        parts.append(oracle.causal_mask(t, s, offset=np.array(spec.offset)))
    elif spec.causal is not None:
        parts.append(oracle.causal_mask(t, s, align=align or spec.causal))
    if spec.window is not None:
        parts.append(oracle.sliding_window_mask(t, s, window=spec.window))
    if spec.chunk is not None:
        parts.append(oracle.chunked_mask(t, s, chunk_size=spec.chunk))
    if spec.dilation is not None:
        distance = np.arange(t)[:, None] - np.arange(s)[None, :]
        parts.append(distance % spec.dilation == 0)
    if spec.kv_lengths is not None:
        kv_valid = oracle.padding_mask(np.array(spec.kv_lengths), s, side=spec.side)
        q_valid = None
        if spec.q_lengths is not None:
            q_valid = oracle.padding_mask(np.array(spec.q_lengths), t, side=spec.side)
        parts.append(oracle.attention_padding_mask(kv_valid, q_valid))
    if spec.segments is not None:
        parts.append(oracle.segment_mask(np.array(spec.segments)))
    return np.broadcast_to(np.asarray(oracle.and_masks(*parts)), (b, 1, t, s)).copy()


def _case(
    id_: str,
    title: str,
    spec: Spec,
    *,
    b: int = 4,
    h: int = 2,
    t: int = 6,
    s: int | None = None,
    d: int = 4,
    dtype: str = "float32",
    poison: str | None = None,
    seed: int = 0,
    notes: str = "",
    softcap: float | None = None,
    sinks: tuple[float, ...] | None = None,
    grad: bool = False,
    fill_dtype: str | None = None,
    q_scale: float = 1.0,
    alibi: bool = False,
) -> Case:
    s = t if s is None else s
    rng = np.random.default_rng(seed)
    q = q_scale * rng.standard_normal((b, h, t, d))
    k = rng.standard_normal((b, h, s, d))
    v = rng.standard_normal((b, h, s, d))
    if spec.causal == "either":
        masks = {a: _mask_from_spec(spec, b, t, s, a) for a in ("bottom_right", "top_left")}
    else:
        masks = {"": _mask_from_spec(spec, b, t, s)}
    mask = next(iter(masks.values()))
    if poison is not None:
        # Keys no query may attend to (padded keys) get a poisoned k, so their scores are NaN or
        # +inf; v stays finite (0 * NaN would poison the oracle's output too).
        dead_keys = np.asarray(~mask.any(axis=(1, 2)))  # (B, S)
        if poison == "nan":
            k[dead_keys[:, None, :, None].repeat(h, 1).repeat(d, 3)] = np.nan
        else:
            q[..., 0] = np.abs(q[..., 0]) + 0.5
            k[np.broadcast_to(dead_keys[:, None, :], (b, h, s))] = 0.0
            k[..., 0] = np.where(dead_keys[:, None, :], np.inf, k[..., 0])
    dt = numpy_dtype(dtype)
    d_out = rng.standard_normal((b, h, t, d)).astype(dt) if grad else None
    sink_logits = None if sinks is None else np.array(sinks, np.float32)
    bias = oracle.alibi_bias(h, t, s) if alibi else None
    variants = _alibi_variants(h, t, s) if alibi else {}
    return Case(id_, title, dtype, q.astype(dt), k.astype(dt), v.astype(dt), spec, masks, poison, notes,
                softcap, sink_logits, d_out, fill_dtype, bias, variants)


def _alibi_variants(h: int, t: int, s: int) -> dict[str, np.ndarray]:
    """The ALiBi bias misread: the power-of-two slope rule used for any head count (attention-gym's
    generate_alibi_bias), and no bias at all."""
    slopes = np.exp2(-8.0 * np.arange(1, h + 1) / h)
    distance = np.arange(s)[None, :] - np.arange(t)[:, None]
    return {
        f"ALiBi with slopes 2^(-8 (h + 1) / H) for every H (the paper's rule only for H a power of two; H = {h})":
            (slopes[:, None, None] * distance).astype(np.float32),
        "none (the bias is dropped)": np.zeros((h, t, s), np.float32),
    }


def all_cases() -> list[Case]:
    """The matrix's columns, in order.

    Most share one shape (B=4, H=2, T=S=6, D=4, float32), so a framework that compiles per shape
    (JAX) compiles once for them; the matrix stays well under a minute.
    """
    lengths = (4, 1, 6, 3)
    return [
        _case("causal-square", "causal T=S", Spec(causal="top_left")),
        _case("causal-rectangular", "causal T<S", Spec(causal="either"), t=3, s=6, seed=1,
              notes="T=3, S=6; mask-taking paths get the bottom_right mask; the alignment a path uses is reported"),
        _case("sliding-window", "sliding window", Spec(window=(2, 1)), seed=2,
              notes="window=(2, 1): query i sees keys i-2 .. i+1"),
        _case("padding-left", "left padding", Spec(kv_lengths=lengths, side="left"), seed=3,
              notes="key lengths 4, 1, 6, 3, left-padded"),
        _case("padding-right", "right padding", Spec(kv_lengths=lengths), seed=4,
              notes="key lengths 4, 1, 6, 3, right-padded"),
        _case("segment", "segment / packed",
              Spec(segments=((0, 0, 1, 1, 1, 2), (0, 0, 0, 1, 1, 1), (0, 1, 2, 3, 4, 5), (0,) * 6)), seed=5,
              notes="packed sequences, segment ids [0,0,1,1,1,2], [0,0,0,1,1,1], [0,1,2,3,4,5], [0]*6"),
        _case("fully-masked-row", "fully-masked row", Spec(kv_lengths=(2, 4, 6, 5), q_lengths=(3, 1, 6, 4)), seed=6,
              notes="right-padded queries and keys (query lengths 3, 1, 6, 4; key lengths 2, 4, 6, 5): "
                    "padded queries see no key"),
        _case("fully-masked-batch", "fully-masked batch item", Spec(kv_lengths=(6, 0, 2, 4)), seed=7,
              notes="key lengths 6, 0, 2, 4: batch item 1 has no key at all"),
        _case("nan-at-masked", "NaN at masked", Spec(kv_lengths=lengths), poison="nan", seed=8,
              notes="right padding (4, 1, 6, 3); padded keys' k is NaN, so their scores are NaN"),
        _case("inf-at-masked", "+inf at masked", Spec(kv_lengths=lengths), poison="inf", seed=9,
              notes="right padding (4, 1, 6, 3); padded keys' scores are +inf"),
        _case("float16-fills", "float16 fills", Spec(causal="top_left", kv_lengths=(6, 3, 0, 5)),
              dtype="float16", seed=10,
              notes="float16, causal + key padding (lengths 6, 3, 0, 5: item 2 fully masked)"),
        _case("bfloat16-fills", "bfloat16 fills", Spec(causal="top_left", kv_lengths=(6, 3, 0, 5)),
              dtype="bfloat16", seed=11,
              notes="bfloat16, causal + key padding (lengths 6, 3, 0, 5: item 2 fully masked)"),
        _case("float16-fills-upcast", "float16 fills upcast", Spec(causal="top_left", kv_lengths=(6, 3, 0, 5)),
              fill_dtype="float16", seed=12,
              notes="float32 scores, causal + key padding (lengths 6, 3, 0, 5); paths taking an additive mask "
                    "build it in float16 (finfo.min = -65504) and cast it to float32, as a model in half "
                    "precision does when it upcasts its softmax"),
        _case("causal-window", "causal window", Spec(causal="top_left", window=(2, 0)), seed=13,
              notes="causal sliding window: query i sees keys i-2 .. i; each path states it in its own "
                    "convention through refmask.conventions (Hugging Face sliding_window=3, attention-gym "
                    "window_size=2, jax local_window_size=(2, 0))"),
        _case("decode-offset", "decode, per-example cache offset", Spec(causal="top_left", offset=(5, 2, 6, 0)),
              t=2, s=8, seed=14,
              notes="2 new queries into a cache of 8 slots; example b's queries sit at positions offset[b] and "
                    "offset[b] + 1, offsets 5, 2, 6, 0, so they see keys j <= offset[b] + i"),
        _case("varlen-packed", "packed varlen", Spec(causal="top_left", segments=((0, 0, 0, 1, 1, 1, 1, 2, 2, 2),)),
              b=1, t=10, seed=15,
              notes="one packed row of 3 documents (lengths 3, 4, 3; cu_seqlens 0, 3, 7, 10), causal within each"),
        _case("softcap", "softcap", Spec(causal="top_left"), softcap=2.0, q_scale=4.0, seed=16,
              notes="causal, scores soft-capped: s -> 2 tanh(s / 2) after scaling (Gemma 2's attn_logit_softcapping)"),
        _case("sinks", "sinks", Spec(causal="top_left", kv_lengths=(6, 2, 0, 4)), sinks=(0.5, -1.0), seed=17,
              notes="causal + key padding (lengths 6, 2, 0, 4), one sink logit per head (0.5, -1.0) in every "
                    "row's softmax denominator (gpt-oss); a row with no kept key gives 0"),
        _case("gradients", "gradients", Spec(kv_lengths=(2, 4, 6, 5), q_lengths=(3, 1, 6, 4)), grad=True, seed=18,
              notes="the fully-masked-row case's gradients through the path's autodiff, against "
                    "refmask.attention_vjp: finite on fully-masked rows and equal elsewhere"),
        _case("prefix-lm", "prefix LM", Spec(causal="top_left", prefix=3), seed=19,
              notes="causal with a bidirectional prefix of 3 tokens: query i sees keys 0, 1, 2 and keys j <= i "
                    "(refmask.prefix_lm_mask; attention-gym generate_prefix_lm_mask(3))"),
        _case("dilated-window", "dilated window", Spec(window=(4, 4), dilation=2), seed=20,
              notes="dilated sliding window: query i sees keys j with |i - j| <= 4 and i - j even (attention-gym "
                    "generate_dilated_sliding_window(4, 2))"),
        _case("chunked-causal", "chunked causal", Spec(causal="top_left", chunk=4), seed=22,
              notes="causal within chunks of 4 positions: query i sees keys j <= i with j // 4 == i // 4 (Llama 4's "
                    "attention_chunk_size=4; refmask.chunked_mask(chunk_size=4) and causal_mask)"),
        _case("alibi", "ALiBi, 3 heads", Spec(causal="top_left"), h=3, alibi=True, seed=21,
              notes="causal with the ALiBi bias refmask.alibi_bias(3, 6): slopes 2^-4, 2^-8, 2^-2, the paper's "
                    "rule for a head count that is not a power of two; paths add it to the scores (a float "
                    "mask, bias=, a score_mod)"),
    ]
