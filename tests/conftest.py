import os

# Four host devices let the JAX sharding tests run on CPU; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import pytest  # noqa: E402

from harness import VARIANT_MODULES, load_variants  # noqa: E402


def _variant_params():
    for framework in VARIANT_MODULES:
        loaded = load_variants(framework)
        if isinstance(loaded, str):
            yield pytest.param(None, id=framework, marks=pytest.mark.skip(reason=loaded))
        else:
            yield from (pytest.param(v, id=v.id) for v in loaded)


VARIANT_PARAMS = list(_variant_params())


@pytest.fixture(scope="session", params=VARIANT_PARAMS)
def variant(request):
    """Each installed backend variant (numpy; jax eager and jit; torch eager and autograd ...)."""
    return request.param
