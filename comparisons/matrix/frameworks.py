"""The frameworks of the matrix, which of them can run here and why not (refmask's registry of
dependencies, refmask._backends), and their adapters' paths."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from refmask._backends import install_hint, missing_dependency

from .._base import Path


@dataclass(frozen=True)
class Framework:
    modules: tuple[str, ...]  # what its adapters import
    extra: str  # the refmask extra that installs them
    adapters: str  # the module of its paths (PATHS) and FRAMEWORK_VERSION


FRAMEWORKS = {
    "torch": Framework(("torch",), "torch", "comparisons.torch_paths"),
    "jax": Framework(("jax",), "jax", "comparisons.jax_paths"),
    "flax": Framework(("jax", "flax"), "jax", "comparisons.flax_paths"),
    "onnx": Framework(("onnx", "onnxruntime"), "compare", "comparisons.onnx_paths"),
    "transformers": Framework(("torch", "transformers"), "compare", "comparisons.hf_paths"),
    "xformers": Framework(("torch", "xformers"), "compare", "comparisons.xformers_paths"),
    "attn_gym": Framework(("torch", "attn_gym"), "compare", "comparisons.attn_gym_paths"),
    "splash": Framework(("jax",), "jax", "comparisons.splash_paths"),
    "keras": Framework(("jax", "keras"), "compare", "comparisons.keras_paths"),
}


def _chosen(frameworks: list[str] | None) -> list[str]:
    return [name for name in FRAMEWORKS if not frameworks or name in frameworks]


def missing_reason(name: str) -> str | None:
    """Why framework `name`'s paths cannot run here (a module is not installed), or None if they can."""
    framework = FRAMEWORKS[name]
    for module in framework.modules:
        why = missing_dependency(module, framework.extra, f"comparing {name}")
        if why is not None:
            return why
    return None


def nothing_to_compare(frameworks: list[str] | None = None) -> str | None:
    """A one-line message when none of the chosen frameworks is installed, else None."""
    names = _chosen(frameworks)
    if any(missing_reason(name) is None for name in names):
        return None
    extras = ",".join(dict.fromkeys(FRAMEWORKS[name].extra for name in names))
    return (f"no framework to compare with the oracle ({', '.join(names)}: not installed); "
            f"{install_hint(extras)}")


def load_paths(frameworks: list[str] | None = None) -> tuple[list[Path], list[dict[str, str]], dict[str, str]]:
    """The installed frameworks' paths, the skipped frameworks (with why) and the versions."""
    paths: list[Path] = []
    skipped: list[dict[str, str]] = []
    versions: dict[str, str] = {"numpy": np.__version__}
    for name in _chosen(frameworks):
        why = missing_reason(name)
        if why is not None:
            skipped.append({"framework": name, "reason": why})
            continue
        try:
            module = importlib.import_module(FRAMEWORKS[name].adapters)
        except Exception as err:  # installed but broken: say so, run the rest
            skipped.append({"framework": name, "reason": f"import failed: {type(err).__name__}: {err}"[:200]})
            continue
        versions[name] = module.FRAMEWORK_VERSION
        paths.extend(module.PATHS)
    return paths, skipped, versions
