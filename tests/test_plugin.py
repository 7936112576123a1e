"""refmask's pytest plugin (refmask.testing.plugin, loaded through the pytest11 entry point):
an `attention_backend` fixture, and nothing at all for test runs that do not ask for it."""

from __future__ import annotations

import pytest

from refmask import BACKENDS, installed_backends
from refmask._backends import unavailable_reason

pytest_plugins = ["pytester"]

RUNNABLE = installed_backends()

USES_FIXTURE = """
def test_backend(attention_backend):
    assert attention_backend in ("numpy", "jax", "torch")
"""


def test_plugin_is_loaded_through_the_entry_point(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--refmask-backends=LIST*"])


def test_tests_that_do_not_request_the_fixture_are_untouched(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("x", [1, 2])
        def test_plain(x):
            assert x

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    assert "attention_backend" not in result.stdout.str()
    # Narrowing the backends does not touch them either.
    pytester.runpytest("--refmask-backends=numpy").assert_outcomes(passed=3)


def test_fixture_runs_the_test_once_per_backend(pytester):
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest("-v", "-rs")
    result.assert_outcomes(passed=len(RUNNABLE), skipped=len(BACKENDS) - len(RUNNABLE))
    result.stdout.fnmatch_lines(["*test_backend?numpy? PASSED*"])
    for name in set(BACKENDS) - set(RUNNABLE):
        result.stdout.fnmatch_lines([f"*test_backend?{name}? SKIPPED*"])
        assert unavailable_reason(name) in result.stdout.str()  # the registry's reason and install hint


def test_option_selects_backends(pytester):
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest("-v", "--refmask-backends=numpy")
    result.assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)
    result.stdout.fnmatch_lines(["*test_backend?numpy? PASSED*"])


def test_ini_key_selects_backends(pytester):
    pytester.makeini("[pytest]\nrefmask_backends = numpy\n")
    pytester.makepyfile(USES_FIXTURE)
    pytester.runpytest().assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)


def test_command_line_overrides_the_ini_key(pytester):
    pytester.makeini("[pytest]\nrefmask_backends = jax\n")
    pytester.makepyfile(USES_FIXTURE)
    pytester.runpytest("--refmask-backends=numpy").assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)


def test_unknown_backend_is_a_usage_error(pytester):
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest("--refmask-backends=numpy,tensorflow")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend(s) tensorflow*"])


def test_users_own_fixture_of_the_same_name_wins(pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def attention_backend():
            return "mine"
        """
    )
    pytester.makepyfile(
        """
        def test_backend(attention_backend):
            assert attention_backend == "mine"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.runpytest("--refmask-backends=numpy").assert_outcomes(passed=1)


def test_users_own_parametrisation_of_the_name_is_not_deselected(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("attention_backend", ["jax", "torch"])
        def test_backend(attention_backend):
            assert attention_backend in ("jax", "torch")
        """
    )
    pytester.runpytest("--refmask-backends=numpy").assert_outcomes(passed=2)


def test_fixture_with_check_attention(pytester):
    pytester.makepyfile(
        """
        from refmask import attention
        from refmask.testing import check_attention

        def test_refmask_attention_conforms(attention_backend):
            check_attention(lambda q, k, v, mask: attention(q, k, v, mask), backend=attention_backend,
                            examples=0, dtypes=["float32"])
        """
    )
    pytester.runpytest("--refmask-backends=numpy").assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)


def test_loading_the_plugin_imports_no_framework(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_no_framework_imported(attention_backend):
            assert attention_backend == "numpy"
            assert "jax" not in sys.modules and "torch" not in sys.modules
            assert "hypothesis.extra" not in sys.modules
        """
    )
    # A fresh interpreter: this process has long imported the frameworks.
    result = pytester.runpytest_subprocess("--refmask-backends=numpy", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)


def test_plugin_can_be_enabled_explicitly_when_autoload_is_off(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(USES_FIXTURE)
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert off.ret == pytest.ExitCode.TESTS_FAILED
    off.stdout.fnmatch_lines(["*fixture 'attention_backend' not found*"])
    # "-p refmask" names the entry point, so it also works (as a no-op) when autoloading is on.
    on = pytester.runpytest_subprocess("-p", "refmask", "--refmask-backends=numpy", "-p", "no:cacheprovider")
    on.assert_outcomes(passed=1, deselected=len(BACKENDS) - 1)


def test_plugin_can_be_disabled(pytester):
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest("-p", "no:refmask")
    result.stdout.fnmatch_lines(["*fixture 'attention_backend' not found*"])
