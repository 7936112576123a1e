"""refmask.testing: the oracle as a test dependency for your own attention code.

assert_weights_close / assert_attention_close compare any NumPy, jax or torch arrays with the
oracle's, structure first (same exact zeros, same NaNs), then values within per-dtype tolerances
(refmask.testing.tolerances). The case catalogue is refmask.testing.cases.
"""

from . import cases, tolerances
from ._assert import assert_attention_close, assert_weights_close, ulp_distance

__all__ = ["assert_attention_close", "assert_weights_close", "cases", "tolerances", "ulp_distance"]
