"""The oracle through the public API (backend="numpy"); its checks against the oracle are identities
but prove the dispatch and the harness itself."""

from harness import Variant

VARIANTS = [Variant("numpy")]
