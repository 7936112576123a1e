"""Which GPU this run has, as torch and jax see it, and the header lines that say so.

`python -m comparisons.gpu.device --json FILE` writes what `describe()` finds and prints one line: the
GPU, or that there is no CUDA device. The adapters ask `torch_cuda_device()` / `jax_gpu_device()`
for the device they run on; None means there is none (the tests replace these two to run the
adapters' CUDA-free logic on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

from refmask._backends import unavailable_reason

NO_CUDA = "no CUDA device"
DISTRIBUTIONS = ("torch", "jax", "jaxlib", "flax", "onnxruntime", "transformers", "numpy")


def torch_cuda_device() -> Any:
    """torch's CUDA device, or None (torch missing, or a build or machine without CUDA)."""
    if unavailable_reason("torch") is not None:
        return None
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else None


def jax_gpu_device() -> Any:
    """jax's first GPU device, or None (jax missing, or no GPU backend)."""
    if unavailable_reason("jax") is not None:
        return None
    import jax

    try:
        return jax.devices("gpu")[0]
    except RuntimeError:  # jax raises this when it has no such backend
        return None


def _version(distribution: str) -> str:
    """The installed version of `distribution`, or "not installed"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_smi() -> str:
    """nvidia-smi's name, driver and memory of each GPU, one line each; "" when it is not there."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    return done.stdout.strip() or done.stderr.strip()


def _torch_side() -> dict[str, Any]:
    """torch's CUDA build and device: versions of CUDA and cuDNN, name, capability, memory."""
    if unavailable_reason("torch") is not None:
        return {}
    import torch

    side: dict[str, Any] = {"torch_cuda_build": torch.version.cuda, "torch_cudnn": None, "torch_gpu": None}
    dev = torch_cuda_device()
    if dev is not None and dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        side["torch_gpu"] = f"{p.name} (compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
        side["torch_cudnn"] = torch.backends.cudnn.version()
    return side


def _jax_side() -> dict[str, Any]:
    """jax's GPU device and the cuDNN version its CUDA plugin loaded."""
    device = jax_gpu_device()
    if device is None:
        return {}
    side: dict[str, Any] = {"jax_gpu": str(getattr(device, "device_kind", device))}
    try:
        from jax._src.lib import cuda_versions  # private, so optional: the header says "unknown" without it

        side["jax_cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions is not None else None
    except Exception:
        side["jax_cudnn"] = None
    return side


def described(device_json: str | None) -> dict[str, Any]:
    """describe()'s answer, or the one recorded in the JSON file `device_json` (a stage run apart)."""
    if device_json:
        with open(device_json, encoding="utf-8") as f:
            info: dict[str, Any] = json.load(f)
        return info
    return describe()


def describe() -> dict[str, Any]:
    """Everything the header says: the date, the GPU and driver, versions, and whether each
    framework has its GPU."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "nvidia_smi": _nvidia_smi(),
        "versions": {name: _version(name) for name in DISTRIBUTIONS},
    }
    info.update(_torch_side())
    info.update(_jax_side())
    info["has_torch_cuda"] = bool(info.get("torch_gpu"))
    info["has_jax_gpu"] = bool(info.get("jax_gpu"))
    return info


def status_line(info: dict[str, Any]) -> str:
    """One line: the GPU this run uses, or that there is none and what runs instead."""
    if info.get("has_torch_cuda") or info.get("has_jax_gpu"):
        gpu = info.get("torch_gpu") or info.get("jax_gpu")
        missing = [name for name, key in (("torch", "has_torch_cuda"), ("jax", "has_jax_gpu")) if not info.get(key)]
        return f"GPU: {gpu}" + (f" (no GPU for {', '.join(missing)})" if missing else "")
    build = info.get("torch_cuda_build")
    return (f"{NO_CUDA} (torch CUDA build: {build or 'no'}; jax: no gpu backend): "
            "running the CUDA-free parts only, every CUDA path of the matrix not expressible")


def header_lines(info: dict[str, Any]) -> list[str]:
    """The Markdown list that heads RESULTS-cuda.md and the timings: GPU, driver, versions, date."""
    v = info["versions"]
    gpu = info.get("torch_gpu") or info.get("jax_gpu") or NO_CUDA
    return [
        f"- GPU: {gpu}" + (f"; nvidia-smi: {info['nvidia_smi']}" if info.get("nvidia_smi") else ""),
        f"- torch {v['torch']} (CUDA {info.get('torch_cuda_build') or 'none'}, "
        f"cuDNN {info.get('torch_cudnn') or 'none'}); "
        f"jax {v['jax']}, jaxlib {v['jaxlib']} (GPU: {info.get('jax_gpu') or 'none'}, cuDNN "
        f"{info.get('jax_cudnn') or 'unknown'}); flax {v['flax']}, onnxruntime {v['onnxruntime']}, "
        f"transformers {v['transformers']}, numpy {v['numpy']}, Python {info['python']}",
        f"- date: {info['date']}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Write describe() as JSON (--json FILE) and print the status line."""
    parser = argparse.ArgumentParser(prog="python -m comparisons.gpu.device", description=__doc__)
    parser.add_argument("--json", metavar="FILE", help="write what was found here")
    args = parser.parse_args(argv)
    info = describe()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
    print(status_line(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
