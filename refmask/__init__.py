"""refmask: the reference for attention masks and masked softmax across NumPy, JAX/Flax and PyTorch.

Convention: a mask is a boolean array, True = "this query may attend to this key", broadcastable
to the scores' shape (..., T, S). Every other convention enters and leaves through the converters
(to_additive/from_additive, from_multiplicative, from_torch_mha/to_torch_mha, from_hf). The definitions live in
refmask.oracle (pure NumPy); backend="jax" and backend="torch" are independent implementations
held against it by the test suite. refmask.show draws a mask (or where two masks disagree) as text or
as a picture. Importing refmask imports NumPy only.
"""

from ._api import (
    alibi_bias,
    alibi_slopes,
    and_masks,
    attention,
    attention_padding_mask,
    attention_vjp,
    attention_weights,
    causal_mask,
    chunked_mask,
    cu_seqlens,
    cu_seqlens_from_segment_ids,
    from_additive,
    from_hf,
    from_multiplicative,
    from_torch_mha,
    masked_softmax,
    or_masks,
    pad,
    padding_mask,
    padding_mask_from_ids,
    position_ids_from_padding,
    positions_in_segments,
    prefix_lm_mask,
    segment_ids_from_cu_seqlens,
    segment_ids_from_positions,
    segment_mask,
    sliding_window_mask,
    to_additive,
    to_torch_mha,
    unpad,
    varlen_mask,
)
from ._arrays import AttentionGrads
from ._backends import BACKENDS, installed_backends
from ._show import show
from ._version import __version__ as __version__

__all__ = [
    "BACKENDS",
    "AttentionGrads",
    "alibi_bias",
    "alibi_slopes",
    "and_masks",
    "attention",
    "attention_padding_mask",
    "attention_vjp",
    "attention_weights",
    "causal_mask",
    "chunked_mask",
    "cu_seqlens",
    "cu_seqlens_from_segment_ids",
    "from_additive",
    "from_hf",
    "from_multiplicative",
    "from_torch_mha",
    "installed_backends",
    "masked_softmax",
    "or_masks",
    "pad",
    "padding_mask",
    "padding_mask_from_ids",
    "position_ids_from_padding",
    "positions_in_segments",
    "prefix_lm_mask",
    "segment_ids_from_cu_seqlens",
    "segment_ids_from_positions",
    "segment_mask",
    "show",
    "sliding_window_mask",
    "to_additive",
    "to_torch_mha",
    "unpad",
    "varlen_mask",
]
