"""The package version, read by pyproject.toml (setuptools dynamic version) and refmask.__version__."""

__version__ = "0.2.0"
