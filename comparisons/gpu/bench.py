"""refmask's attention on CUDA timed against the kernels it stands beside: SDPA's flash and cuDNN
kernels (torch), cuDNN's dot_product_attention (jax). `refmask bench` times the CPU only; this is its
GPU counterpart, for docs/benchmarks.md.

Two cases, in bfloat16 at one shape: causal (is_causal=True), and causal + key padding as a bool mask
(B, 1, T, S). Times are medians of interleaved repeats (comparisons.bench.timing.interleaved), each
call waited for (torch.cuda.synchronize, jax's block_until_ready); a kernel that refuses a call is
reported as skipped with its error. No targets: the ratios are what to read.

`python -m comparisons.gpu.bench --output FILE [--repeats N]`
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import refmask

from ..bench.rows import Ref, Row, fmt, fmt_ratio, rows_from_times
from ..bench.timing import interleaved
from . import device as gpu_device

SHAPE = (4, 16, 2048, 2048, 64)  # B, H, T, S, D
CASES = {1: "causal (is_causal=True)", 2: "causal + key padding (bool mask (B, 1, T, S))"}


def inputs(shape: tuple[int, int, int, int, int] = SHAPE) -> dict[str, np.ndarray]:
    """float32 q, k, v (B, H, T|S, D), key lengths between S/2 and S, and the causal + padding mask."""
    b, h, t, s, d = shape
    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, h, t, d), dtype=np.float32)
    k, v = (rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(2))
    lengths = rng.integers(s // 2, s + 1, size=b)
    keys = refmask.attention_padding_mask(refmask.padding_mask(lengths, s))
    mask = refmask.and_masks(refmask.causal_mask(t, s), keys)
    return {"q": q, "k": k, "v": v, "lengths": lengths.astype(np.int32), "mask": np.asarray(mask)}


def _torch_measures(a: dict[str, np.ndarray], dev: Any) -> dict[int, tuple[dict[str, Callable[[], Any]], list[Ref]]]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.from_numpy(a[n]).to(dev, torch.bfloat16) for n in ("q", "k", "v"))
    mask = torch.from_numpy(a["mask"]).to(dev)

    def waited(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            if out.device.type == "cuda":  # kernels run asynchronously: a time is up to the end of the call's
                torch.cuda.synchronize(out.device)
            return out

        return call

    def kernel(backend: Any, **kw: Any) -> Callable[[], Any]:
        def call() -> Any:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return waited(call)

    causal = {
        "refmask": waited(lambda: refmask.attention(q, k, v, is_causal=True)),
        "flash": kernel(SDPBackend.FLASH_ATTENTION, is_causal=True),
        "cudnn": kernel(SDPBackend.CUDNN_ATTENTION, is_causal=True),
        "sdpa": waited(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    }
    masked = {
        "refmask": waited(lambda: refmask.attention(q, k, v, mask)),
        "efficient": kernel(SDPBackend.EFFICIENT_ATTENTION, attn_mask=mask),
        "cudnn": kernel(SDPBackend.CUDNN_ATTENTION, attn_mask=mask),
        "sdpa": waited(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
    }
    return {
        1: (causal, [("flash", "SDPA flash kernel, is_causal=True", {}),
                     ("cudnn", "SDPA cuDNN kernel, is_causal=True", {}),
                     ("sdpa", "SDPA, kernel of its choice, is_causal=True", {})]),
        2: (masked, [("efficient", "SDPA memory-efficient kernel, attn_mask", {}),
                     ("cudnn", "SDPA cuDNN kernel, attn_mask", {}),
                     ("sdpa", "SDPA, kernel of its choice, attn_mask", {})]),
    }


def _jax_measures(a: dict[str, np.ndarray], dev: Any) -> dict[int, tuple[dict[str, Callable[[], Any]], list[Ref]]]:
    import jax
    import jax.numpy as jnp

    def put(x: np.ndarray, dtype: Any = None) -> jax.Array:
        return jax.device_put(x if dtype is None else x.astype(dtype), dev)

    q, k, v = (put(a[n], jnp.bfloat16) for n in ("q", "k", "v"))
    # jax.nn takes (B, T, N, H): transposed here, outside the timings.
    qn, kn, vn = (put(np.ascontiguousarray(a[n].transpose(0, 2, 1, 3)), jnp.bfloat16) for n in ("q", "k", "v"))
    mask, lengths = put(a["mask"]), put(a["lengths"])
    dpa = jax.nn.dot_product_attention
    mine_causal = jax.jit(lambda q, k, v: refmask.attention(q, k, v, is_causal=True, backend="jax"))
    mine_masked = jax.jit(lambda q, k, v, m: refmask.attention(q, k, v, m, backend="jax"))
    cudnn_causal = jax.jit(lambda q, k, v: dpa(q, k, v, is_causal=True, implementation="cudnn"))
    xla_causal = jax.jit(lambda q, k, v: dpa(q, k, v, is_causal=True, implementation="xla"))
    cudnn_mask = jax.jit(lambda q, k, v, m: dpa(q, k, v, mask=m, implementation="cudnn"))
    cudnn_lengths = jax.jit(lambda q, k, v, n: dpa(q, k, v, is_causal=True, key_value_seq_lengths=n,
                                                   implementation="cudnn"))
    causal = {
        "refmask": lambda: mine_causal(q, k, v),
        "cudnn": lambda: cudnn_causal(qn, kn, vn),
        "xla": lambda: xla_causal(qn, kn, vn),
    }
    masked = {
        "refmask": lambda: mine_masked(q, k, v, mask),
        "cudnn": lambda: cudnn_mask(qn, kn, vn, mask),
        "lengths": lambda: cudnn_lengths(qn, kn, vn, lengths),
    }
    return {
        1: (causal, [("cudnn", 'jax.nn.dot_product_attention(is_causal=True, "cudnn"), jit', {}),
                     ("xla", 'jax.nn.dot_product_attention(is_causal=True, "xla"), jit', {})]),
        2: (masked, [("cudnn", 'jax.nn.dot_product_attention(mask=, "cudnn"), jit', {}),
                     ("lengths", 'jax.nn.dot_product_attention(is_causal, key_value_seq_lengths, "cudnn"), jit', {})]),
    }


def measure_each(repeats: int, shape: tuple[int, int, int, int, int] = SHAPE) -> Iterator[list[Row]]:
    """The rows of each backend in turn (torch's, then jax's): refmask against each kernel, or one skipped
    row per case for a backend without a GPU."""
    a: dict[str, np.ndarray] = {}
    for backend, dev, measures in (("torch", gpu_device.torch_cuda_device(), _torch_measures),
                                   ("jax", gpu_device.jax_gpu_device(), _jax_measures)):
        if dev is None:
            yield [Row(case, backend, "attention", "its GPU kernels", skipped=gpu_device.NO_CUDA) for case in CASES]
            continue
        a = a or inputs(shape)
        rows: list[Row] = []
        for case, (fns, refs) in measures(a, dev).items():
            times = interleaved(fns, repeats, calls=10)
            rows += rows_from_times(case, backend, times, f"refmask.attention, {backend}", refs)
        yield rows


def measure(repeats: int, shape: tuple[int, int, int, int, int] = SHAPE) -> list[Row]:
    """Every backend's rows."""
    return [row for rows in measure_each(repeats, shape) for row in rows]


def markdown(rows: list[Row], info: dict[str, Any], repeats: int,
             shape: tuple[int, int, int, int, int] = SHAPE) -> str:
    """The timings as a Markdown table under the GPU's header lines."""
    b, h, t, s, d = shape
    lines = [
        "## On a GPU (`python -m comparisons.gpu`)",
        "",
        *gpu_device.header_lines(info),
        f"- shape (B, H, T, S, D) = ({b}, {h}, {t}, {s}, {d}), bfloat16; medians of {repeats} interleaved repeats, "
        "per call; ratio = refmask / reference",
        "",
        "| case | backend | reference | refmask | reference | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {CASES[row.case]} | {row.backend} | {row.reference} | | | skipped: {row.skipped} |")
        else:
            lines.append(f"| {CASES[row.case]} | {row.backend} | {row.reference} | {fmt(row.value, row.unit)} | "
                         f"{fmt(row.ref_value, row.unit)} | {fmt_ratio(row)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Time refmask on the GPU and write the table (--output), also printed."""
    parser = argparse.ArgumentParser(prog="python -m comparisons.gpu.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", metavar="FILE", help="write the Markdown table here")
    parser.add_argument("--device-json", metavar="FILE", help="the GPU as `python -m comparisons.gpu.device` found it")
    parser.add_argument("--repeats", type=int, default=15, help="repeats per measurement (default: 15)")
    args = parser.parse_args(argv)
    info = gpu_device.described(args.device_json)
    repeats = max(1, args.repeats)
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a kernel that refuses a call warns why, then raises: its row says so
        for backend_rows in measure_each(repeats):
            rows += backend_rows
            if args.output:  # after each backend, so that a run stopped at its timeout keeps what it timed
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(markdown(rows, info, repeats))
    sys.stdout.write(markdown(rows, info, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
