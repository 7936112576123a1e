"""refmask.testing: the oracle as a test dependency for your own attention code.

- check_attention(fn, ...): run your attention function over refmask's case catalogue and
  hypothesis-generated examples, against the oracle; one line in a test file.
- assert_weights_close / assert_attention_close / assert_lse_close: compare any NumPy, jax or torch
  arrays (or nested tuples/dicts of them) with the oracle's, structure first (shape, dtype, the same
  NaNs, the same exact zeros), then values within per-dtype tolerances (refmask.testing.tolerances),
  with a report that names the worst entry and draws where the differences lie.
- assert_gradients_close / attention_gradient_terms: compare gradients of attention with the
  oracle's (refmask.attention_vjp), each entry against the magnitude of the terms it sums.
- refmask.testing.strategies: hypothesis strategies for masks, lengths, segment ids and attention
  problems (imported on first use: only it and check_attention's examples need hypothesis).
- refmask.testing.cases: the shared case catalogue; refmask.testing.plugin: the pytest plugin
  (an `attention_backend` fixture and a --refmask-backends option).

See docs/testing.md.
"""

from typing import Any

from . import cases, tolerances
from ._assert import (
    MismatchError,
    assert_attention_close,
    assert_gradients_close,
    assert_lse_close,
    assert_weights_close,
    ulp_distance,
)
from ._gradients import attention_gradient_terms
from .cases import MASK_KINDS
from .check import CheckError, CheckReport, check_attention

__all__ = [
    "MASK_KINDS",
    "CheckError",
    "CheckReport",
    "MismatchError",
    "assert_attention_close",
    "assert_gradients_close",
    "assert_lse_close",
    "assert_weights_close",
    "attention_gradient_terms",
    "cases",
    "check_attention",
    "strategies",
    "tolerances",
    "ulp_distance",
]


def __getattr__(name: str) -> Any:
    # `refmask.testing.strategies` imports hypothesis, which only the test extra installs.
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
