"""Splash attention's adapters (comparisons/splash_paths.py): its masks state refmask's, and its reference
attention behaves on fully-masked rows as the matrix records."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.matrix.frameworks import missing_reason
from refmask import conventions, oracle
from refmask._backends import missing_dependency


def splash():
    """The adapter module; the test is skipped, with the install hint, where jax is missing."""
    why = missing_reason("splash")
    if why is not None:
        pytest.skip(why)
    from comparisons import splash_paths

    return splash_paths


@functools.cache
def _cases():
    from comparisons.cases import all_cases

    return all_cases()


def cases():
    """The matrix's cases; skipped where the bfloat16 case cannot be built."""
    why = missing_dependency("ml_dtypes", "test", "the bfloat16 case")
    if why is not None:
        pytest.skip(why)
    return _cases()


def test_structure_masks_and_segment_ids_state_the_mask():
    """CausalMask / LocalMask and-ed with the SegmentIds equality equal the oracle's mask on every case
    they can state (a T != S causal case: the top-left one, CausalMask's own alignment); a prefix LM and
    a dilated window they cannot."""
    sp = splash()
    for c in cases():
        if c.spec.prefix is not None or c.spec.dilation is not None:
            with pytest.raises(NotExpressible, match="splash's masks"):
                sp.structure_dense_mask(c)
            continue
        want = c.masks.get("top_left", c.mask)
        np.testing.assert_array_equal(sp.structure_dense_mask(c), np.broadcast_to(want, c.shape), err_msg=c.id)


def test_numpy_masks_materialise_the_mask():
    sp = splash()
    for c in cases():
        np.testing.assert_array_equal(sp._dense(sp.mask_objects(c)), np.broadcast_to(c.mask, c.shape), err_msg=c.id)


@pytest.mark.parametrize("offset", [0, 2, -1])
@pytest.mark.parametrize("window_size", [(2, 0), (1, 1), (None, 1), (0, None), (None, None)])
def test_local_mask_is_the_conventions_window(window_size, offset):
    """LocalMask(shape, window_size, offset) is sliding_window_mask(window=splash_local_mask(window_size), offset)."""
    splash()
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    got = sm.LocalMask((5, 7), window_size=window_size, offset=offset)[:, :]
    want = oracle.sliding_window_mask(5, 7, window=conventions.splash_local_mask(window_size), offset=offset)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("offset", [0, 3, -2])
def test_causal_mask_offset_is_the_oracles(offset):
    splash()
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    np.testing.assert_array_equal(sm.CausalMask((4, 7), offset=offset)[:, :], oracle.causal_mask(4, 7, offset=offset))


def test_chunked_causal_mask_is_chunks_and_causal():
    splash()
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    want = oracle.and_masks(oracle.chunked_mask(8, chunk_size=3), oracle.causal_mask(8))
    np.testing.assert_array_equal(sm.ChunkedCausalMask((8, 8), chunk_size=3)[:, :], want)
    either = sm.CausalMask((8, 8)) | sm.LocalMask((8, 8), window_size=(0, 1), offset=0)
    np.testing.assert_array_equal(either[:, :], oracle.sliding_window_mask(8, window=(None, 1)))


def _one_fully_masked_row(sinks=None, d_out=False):
    """A hand-made case for the NumpyMask path: B=1, H=1, T=S=3, query 1 sees no key."""
    from comparisons.cases import Case, Spec

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 3, 2)).astype(np.float32) for _ in range(3))
    mask = np.array([[[[True, True, True], [False, False, False], [True, True, True]]]])
    grad = rng.standard_normal((1, 1, 3, 2)).astype(np.float32) if d_out else None
    return Case("hand", "hand", "float32", q, k, v, Spec(), {"": mask}, sinks=sinks, d_out=grad)


def test_fully_masked_row_is_uniform_and_zero_with_a_sink():
    """Every masked logit becomes mask_value, so a row with no kept key has equal logits: the mean of v;
    a sink's exp(sink - sink) = 1 then outweighs exp(mask_value - sink) = 0: the row is 0."""
    sp = splash()
    case = _one_fully_masked_row()
    out = sp._attend(case, sp._dense(sp.mask_objects(case)), None).output
    np.testing.assert_allclose(out[0, 0, 1], case.v[0, 0].mean(axis=0), rtol=1e-6)
    sunk = _one_fully_masked_row(sinks=np.array([0.5], np.float32))
    out = sp._attend(sunk, sp._dense(sp.mask_objects(sunk)), None).output
    np.testing.assert_array_equal(out[0, 0, 1], 0.0)


def test_custom_backward_on_a_fully_masked_row():
    """jax's autodiff of the reference gives that row dq = 0 (its logits are the constant mask_value) and
    dv its uniform 1/S share of d_out. The kernel's backward rule (attention_reference_custom) recomputes
    p = exp(logits - logsumexp), and in float32 logsumexp = mask_value + log(S) rounds to mask_value, so p
    is 1 at every key of that row, not 1/S; ds = p * (dp - di) is not masked either. So the row gets a
    query gradient, and dv S times the share, while the rows with kept keys agree."""
    sp = splash()
    case = _one_fully_masked_row(d_out=True)
    mask = sp._dense(sp.mask_objects(case))
    autodiff = sp._attend(case, mask, None).grads
    custom = sp._attend(case, mask, None, custom_vjp=True).grads
    assert autodiff is not None and custom is not None
    assert case.d_out is not None
    np.testing.assert_array_equal(autodiff[0][0, 0, 1], 0.0)
    assert np.abs(custom[0][0, 0, 1]).max() > 1e-2
    np.testing.assert_allclose(custom[0][0, 0, [0, 2]], autodiff[0][0, 0, [0, 2]], rtol=1e-5, atol=1e-6)
    s = case.k.shape[2]
    extra = (1 - 1 / s) * np.broadcast_to(case.d_out[0, 0, 1], (s, case.d_out.shape[-1]))
    np.testing.assert_allclose(custom[2][0, 0] - autodiff[2][0, 0], extra, rtol=1e-5, atol=1e-6)
