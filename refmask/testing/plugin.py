"""refmask's pytest plugin: an `attention_backend` fixture over refmask's backends.

pytest loads this module through refmask's `pytest11` entry point whenever refmask is installed,
so it is built to change nothing in a test run that does not ask for it:

- importing it imports no framework (jax and torch are looked up, never imported);
- it registers one command-line option, --refmask-backends, and one ini key, refmask_backends
  (both only narrow the fixture below; neither does anything by itself);
- it defines one fixture, `attention_backend`, which only the tests that request it see; a
  fixture of that name in your own conftest.py takes precedence, untouched;
- its collection hook deselects only tests parametrised by this fixture's own parameters.

A test that requests `attention_backend` runs once per backend ("numpy", "jax", "torch") and gets
the backend's name, to pass as `backend=`. Backends whose framework is not installed are skipped
with the reason and the install command; --refmask-backends=numpy,torch (or `refmask_backends =
numpy,torch` in the ini file) deselects the others. With plugin autoloading disabled
(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), enable it with `-p refmask.testing.plugin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .._backends import BACKENDS, unavailable_reason

_OPTION = "--refmask-backends"
_INI = "refmask_backends"


@dataclass(frozen=True)
class _BackendParam:
    """The fixture's parameter: a type of its own, so the collection hook recognises its tests."""

    name: str

    def __str__(self) -> str:
        return self.name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("refmask")
    group.addoption(
        _OPTION,
        action="store",
        default=None,
        metavar="LIST",
        help=f"comma-separated backends ({', '.join(BACKENDS)}) that refmask's attention_backend fixture "
        "runs over (default: every installed one); affects only tests that request that fixture",
    )
    parser.addini(_INI, help=f"default for {_OPTION}", type="string", default="")


def selected_backends(config: pytest.Config) -> tuple[str, ...]:
    """The backends chosen by --refmask-backends, else the ini key, else all of refmask's backends."""
    raw = config.getoption(_OPTION)
    source = _OPTION
    if raw is None:
        raw, source = config.getini(_INI), _INI
    names = tuple(n.strip() for n in str(raw or "").split(",") if n.strip())
    if not names:
        return BACKENDS
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"{source}: unknown backend(s) {', '.join(unknown)}; choose among {', '.join(BACKENDS)}"
        )
    return names


def pytest_configure(config: pytest.Config) -> None:
    selected_backends(config)  # a typo in the option fails at startup, not at the first test


@pytest.fixture(params=[_BackendParam(n) for n in BACKENDS], ids=list(BACKENDS))
def attention_backend(request: pytest.FixtureRequest) -> str:
    """The name of one refmask backend ("numpy", "jax" or "torch"); the test runs once per backend.

    Pass it as `backend=` to refmask and check_attention, or convert arrays with
    refmask._backends.from_numpy. Missing frameworks are skipped; --refmask-backends narrows the set.
    """
    name = request.param.name
    why = unavailable_reason(name)
    if why is not None:
        pytest.skip(why)
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = set(selected_backends(config))
    if chosen == set(BACKENDS):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("attention_backend")
        (drop if isinstance(param, _BackendParam) and param.name not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
