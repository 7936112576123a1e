"""The suite's backend fixture, `variant`, over refmask's registry of backends (refmask._backends).

No framework is imported here or at collection: a variant's framework is imported when its first
test is set up, and each test gets its framework's configuration for itself (JAX's x64 flag is
switched for the test and restored after), so no test inherits another's. A variant whose framework
is not installed is skipped with the registry's reason and install hint; --refmask-backends (refmask's
pytest plugin) narrows the variants as it narrows the plugin's `attention_backend` fixture.
"""

import pytest

from harness import VARIANTS, VariantName
from harness.environments import configure_xla
from refmask._backends import unavailable_reason

configure_xla()  # before any test imports jax (nothing imported above does)


@pytest.fixture(params=[pytest.param(v, id=v.id) for v in VARIANTS])
def variant(request):
    """Each backend variant (jax eager, jitted and with x64 off; torch eager and autograd), set up for one test."""
    name: VariantName = request.param
    why = name.unavailable_reason()
    if why is not None:
        pytest.skip(why)
    chosen = name.load()
    with chosen.configured():
        yield chosen


@pytest.fixture(autouse=True)
def _jax_x64_when_marked(request):
    """Tests marked jax_x64 run with jax_enable_x64 on, restored after."""
    if request.node.get_closest_marker("jax_x64") is None:
        yield
        return
    why = unavailable_reason("jax")
    if why is not None:
        pytest.skip(why)
    import jax

    with jax.enable_x64(True):
        yield


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by scope, a scope being one catalogue case (refmask.testing.cases) of a
    module, or else the module: a case's variants, policies and dtypes share compiled programs (JAX's above
    all), which a second worker would compile again."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    from refmask.testing.cases import ATTENTION_CASES

    suffixes = sorted((f"-{c.id}]" for c in ATTENTION_CASES), key=len, reverse=True)

    class ByCatalogueCase(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            if nodeid.split("::")[-1].split("[")[0] in _OWN_SCOPE_TESTS:
                return nodeid
            case = next((s for s in suffixes if nodeid.endswith(s)), None)
            # Other tests go by module: a module's fixtures (a bench run, a matrix) are built once.
            return module if case is None else f"{module}::{case}"

    return ByCatalogueCase(config, log)


# Long tests that share nothing with their module's other tests: each is a scope of its own, so their
# parametrizations (one matrix per framework) run on every worker.
_OWN_SCOPE_TESTS = ("test_matrix_equals_the_committed_expectation",)

# Modules of the longest scopes, scheduled first (in this order: the longest single scope first, --no-
# loadscope-reorder keeps it) so that no worker is left alone with one of them at the end.
_LONG_MODULES = ("test_bench.py", "test_comparisons.py", "test_jax_at_xla_defaults.py", "test_threads.py",
                 "test_properties.py", "test_cross_backend.py", "test_torch_backend.py", "test_jax_backend.py")


def pytest_collection_modifyitems(config, items):
    _narrow_to_selected_backends(config, items)
    rank = {name: n for n, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


def _narrow_to_selected_backends(config, items):
    from refmask.testing.plugin import selected_backends

    try:
        chosen = set(selected_backends(config))
    except ValueError:  # refmask's plugin is disabled (-p no:refmask): no option to narrow by
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        name = getattr(getattr(item, "callspec", None), "params", {}).get("variant")
        (drop if isinstance(name, VariantName) and name.backend not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
