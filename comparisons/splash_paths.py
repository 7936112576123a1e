"""Splash attention's masks and reference attention (jax.experimental.pallas.ops.tpu.splash_attention).

The Pallas kernel itself runs on TPU only; what runs everywhere, and what its tests check it against,
is the module's pure-jnp reference (splash_attention_kernel.attention_reference, and
attention_reference_custom: the same forward with the kernel's flash-style backward as a custom_vjp).
The adapters give it masks built with splash's own mask library. Conventions to translate (refmask: bool
mask, True = may attend, broadcastable to (B, H, T, S)):

- Splash works per head: q (H, T, D), k and v (H, S, D), no batch axis; make_masked_mha_reference vmaps
  attention_reference over the heads, and a model vmaps over its batch. The adapters do both.
- Masks are lazy objects (splash_attention_mask) of shape (T, S); MultiHeadMask stacks one per head to
  (H, T, S). Indexing materialises a NumPy bool array, True = attend (refmask's convention), which is
  what make_masked_mha_reference does (mask[:, :, :]). CausalMask(shape, offset) keeps q + offset >= kv
  (offset 0: top-left); LocalMask(shape, window_size=(l, r), offset) keeps q + offset - l <= kv <=
  q + offset + r, a None side unbounded (refmask.conventions.splash_local_mask); ChunkedCausalMask(shape,
  chunk_size) keeps q >= kv within chunks of chunk_size (Llama 4's); & and | combine masks.
  A mask is static (the kernel is built for it), so an example whose mask differs (its own cache
  offset) gets its own Mask object, as it would get its own kernel.
- SegmentIds(q=(T,), kv=(S,)): the dynamic part, and-ed with the static mask: keep only where
  q[i] == kv[j]. Padding is a segment id no real token has: padded keys get one, padded queries another.
- No 1/sqrt(D) scaling inside: the caller scales q first. attn_logits_soft_cap=c maps the logits to
  c * tanh(s / c) before masking; sinks (H,) add exp(sink) to each head's softmax denominator.
- Masked logits are replaced by mask_value (default -0.7 * float32 max), so a row with no kept key has
  equal logits and comes out uniform, unless a sink outweighs them.
- The reference computes in float32 and returns float32; the kernel returns q's dtype, so the adapters
  cast the output to q's dtype as the kernel does.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from refmask import conventions

from ._base import Native, NotExpressible, Path, check_expressible

FRAMEWORK_VERSION = jax.__version__

# Padding as segment ids: ids no real token carries (the cases' segment ids are >= 0), different for
# padded keys and padded queries, so a padded query sees no key and a padded key is seen by no query.
_PAD_KEY_ID = -1
_PAD_QUERY_ID = -2

# ----------------------------------------------------------------------------------------------
# the masks


def _dense(masks: list[splash_mask.Mask]) -> np.ndarray:
    """One splash mask per example, materialised as make_masked_mha_reference does: (B, H, T, S) bool."""
    return np.stack([np.asarray(m[:, :, :]) for m in masks])


def mask_objects(case) -> list[splash_mask.Mask]:
    """The case's canonical mask as splash masks: per example, a MultiHeadMask of NumpyMask (one per head)."""
    b, h, t, s = case.shape
    full = np.broadcast_to(case.mask, (b, h, t, s))
    return [splash_mask.MultiHeadMask([splash_mask.NumpyMask(full[i, j].copy()) for j in range(h)])
            for i in range(b)]


def _static_mask(case, offset: int) -> splash_mask.Mask:
    """The static (T, S) part of one example's mask from the structure: CausalMask (or ChunkedCausalMask)
    & LocalMask."""
    spec = case.spec
    _, _, t, s = case.shape
    mask: splash_mask.Mask = splash_mask.FullMask((t, s))
    if spec.chunk is not None:
        # ChunkedCausalMask is causal and chunked at once, top-left, with no offset of its own.
        if spec.causal is None or offset or (spec.causal == "bottom_right" and t != s):
            raise NotExpressible("ChunkedCausalMask states top-left causal chunks only")
        mask = mask & splash_mask.ChunkedCausalMask((t, s), chunk_size=spec.chunk)
    elif spec.causal is not None:
        # CausalMask's own alignment is top-left (offset 0); a bottom-right case shifts it by S - T.
        shift = s - t if spec.causal == "bottom_right" else 0
        mask = mask & splash_mask.CausalMask((t, s), offset=offset + shift)
    if spec.window is not None:
        window_size = tuple(spec.window)
        if conventions.splash_local_mask(window_size) != tuple(spec.window):
            raise NotExpressible(f"no LocalMask window_size states window={spec.window}")
        mask = mask & splash_mask.LocalMask((t, s), window_size=window_size, offset=0)
    return mask


def structure_masks(case) -> list[splash_mask.Mask]:
    """One (H, T, S) MultiHeadMask per example from the structure: the examples share one Mask
    object unless their cache offsets differ."""
    check_expressible(case, parts={"causal", "window", "offset", "kv_lengths", "q_lengths", "segments", "chunk"},
                      causal=("top_left", "bottom_right", "either"),
                      why="splash's masks and SegmentIds state causal, chunks, windows, offsets, padding and segments "
                          "only")
    b, h, _, _ = case.shape
    offsets = case.spec.offset or (0,) * b
    by_offset = {o: splash_mask.MultiHeadMask([_static_mask(case, o)] * h) for o in set(offsets)}
    return [by_offset[o] for o in offsets]


def _valid(lengths, n: int, side: str) -> np.ndarray:
    pos = np.arange(n)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return pos < lengths if side == "right" else pos >= n - lengths


def segment_ids(case) -> splash_kernel.SegmentIds:
    """The dynamic part of the mask as SegmentIds with a batch axis: q (B, T), kv (B, S); all 0 (one
    segment) where the case has neither segments nor padding."""
    spec = case.spec
    b, _, t, s = case.shape
    if spec.segments is not None:
        q_ids = np.array(spec.segments, np.int32)
        kv_ids = q_ids.copy()
    else:
        q_ids, kv_ids = np.zeros((b, t), np.int32), np.zeros((b, s), np.int32)
    if spec.kv_lengths is not None:
        kv_ids = np.where(_valid(spec.kv_lengths, s, spec.side), kv_ids, _PAD_KEY_ID)
    if spec.q_lengths is not None:
        q_ids = np.where(_valid(spec.q_lengths, t, spec.side), q_ids, _PAD_QUERY_ID)
    return splash_kernel.SegmentIds(q=jnp.asarray(q_ids), kv=jnp.asarray(kv_ids))


def structure_dense_mask(case) -> np.ndarray:
    """What the reference applies for structure_masks and segment_ids: the static mask and-ed with
    q_ids[i] == kv_ids[j], (B, H, T, S)."""
    mask = _dense(structure_masks(case))
    seg = segment_ids(case)
    same = np.asarray(seg.q)[:, None, :, None] == np.asarray(seg.kv)[:, None, None, :]
    return mask & same


# ----------------------------------------------------------------------------------------------
# the reference attention


@functools.partial(jax.jit, static_argnames=("softcap", "custom_vjp"))
def _reference(mask, q, k, v, seg, sinks, *, softcap, custom_vjp):
    """splash's per-head reference, vmapped over heads (as make_masked_mha_reference does) and the batch:
    mask (B, H, T, S), q (B, H, T, D), k and v (B, H, S, D), seg SegmentIds of (B, T) / (B, S) or None,
    sinks (H,) or None."""
    impl = splash_kernel.attention_reference_custom if custom_vjp else splash_kernel.attention_reference
    one_head = functools.partial(impl, attn_logits_soft_cap=softcap)
    per_head = jax.vmap(one_head, in_axes=(0, 0, 0, 0, None, None if sinks is None else 0))
    per_example = jax.vmap(per_head, in_axes=(0, 0, 0, 0, None if seg is None else 0, None))
    return per_example(mask, q, k, v, seg, sinks)


def _attend(case, mask: np.ndarray, seg, *, custom_vjp: bool = False) -> Native:
    """Run the reference on the case (q scaled by 1/sqrt(D) first, as splash's callers do); with the
    case's d_out, also jax.vjp's (dq, dk, dv) of sum(d_out * output)."""
    q, k, v = (jnp.asarray(x) for x in (case.q, case.k, case.v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    sinks = None if case.sinks is None else jnp.asarray(case.sinks)

    def attention(q, k, v):
        # The reference's first step casts q, k and v to float32; casting before the call gives the
        # same numbers and one compiled function for every input dtype.
        q32, k32, v32 = ((q * jnp.asarray(scale, q.dtype)).astype(jnp.float32), k.astype(jnp.float32),
                         v.astype(jnp.float32))
        out = _reference(jnp.asarray(mask), q32, k32, v32, seg, sinks, softcap=case.softcap, custom_vjp=custom_vjp)
        return out.astype(q.dtype)  # the kernel's output dtype

    if case.d_out is None:
        return Native(output=np.asarray(attention(q, k, v)))
    out, vjp = jax.vjp(attention, q, k, v)
    dq, dk, dv = vjp(jnp.asarray(case.d_out, out.dtype))
    return Native(output=np.asarray(out), grads=(np.asarray(dq), np.asarray(dk), np.asarray(dv)))


def splash_mask_reference(case) -> Native:
    """attention_reference with the case's mask as NumpyMask (per head, per example); no segment ids."""
    return _attend(case, _dense(mask_objects(case)), None)


def splash_structure_reference(case) -> Native:
    """attention_reference with CausalMask / LocalMask (static) and SegmentIds (segments, padding)."""
    return _attend(case, _dense(structure_masks(case)), segment_ids(case))


def splash_structure_custom_vjp(case) -> Native:
    """attention_reference_custom (the kernel's flash-style backward) with the structure masks.

    Its backward recomputes p = exp(logits - logsumexp) and never masks ds = p * (dp - di): on a row with
    no kept key, logsumexp = mask_value + log(S) rounds to mask_value in float32, so p is 1 at every key
    (not the forward's 1/S), and that row gets a nonzero dq and dk and S times its share of dv."""
    return _attend(case, _dense(structure_masks(case)), segment_ids(case), custom_vjp=True)


_FEATURES = frozenset({"softcap", "sinks", "grad"})

PATHS = [
    Path("splash.reference-mask", "splash", "splash attention_reference(NumpyMask)", splash_mask_reference,
         "dense bool mask, True = attend (same), one NumpyMask per head and example; q pre-scaled",
         features=_FEATURES),
    Path("splash.reference-structure", "splash", "splash attention_reference(CausalMask, LocalMask, SegmentIds)",
         splash_structure_reference,
         "CausalMask(offset) or ChunkedCausalMask & LocalMask(window_size) static, padding and segments as "
         "SegmentIds",
         features=_FEATURES),
    Path("splash.reference-custom-vjp", "splash", "splash attention_reference_custom (flash backward)",
         splash_structure_custom_vjp, "as reference-structure; gradients through the kernel's backward rule",
         features=_FEATURES),
]
