"""CPU speed for the U-Net: GroupNorm followed by SiLU as one kernel, for channels_last bfloat16 tensors on a CPU
where bf16 is native (AVX-512 or newer: `native_bf16`).

    y = SiLU(γ (x − μ_{n,g}) / √(σ²_{n,g} + ε) + β),   SiLU(z) = z σ(z)        (Wu & He 2018; Elfwing et al. 2018)

PyTorch runs GroupNorm, the dtype casts around it and SiLU as separate passes over memory, and its bf16 GroupNorm in
channels_last is several times slower than its float32 one; together they are most of a small U-Net's time on a CPU
once the convolutions run in bf16 (bench/ddpm_throughput.py). `group_norm_silu.c` beside this file does the whole
thing, forward and backward, reading each sample twice, in float32, rounding to the input's dtype once.

It is compiled with the system's C compiler ($CC, else `cc`) into a per-machine cache ($GENLAB_KERNEL_CACHE, else
$XDG_CACHE_HOME/genlab/kernels, else ~/.cache/genlab/kernels) and called through ctypes: ahead of time by
`python -m core.kernels build`, else on first use, once across processes (a lock file) and threads (a lock). A
compiler without OpenMP (Apple's clang) builds a single-threaded kernel. Any failure (no compiler, a failing one, a
cache folder it cannot write, a library that will not load) falls back to PyTorch's own ops with one warning, as
does any other layout, dtype or device (float32 too: `DTYPES`); those ops are the reference the tests compare the
kernel against.
GENLAB_KERNELS=0 (or off, false, no) turns it off; `enabled` is the same switch in code.

Removed in issue 38, each paying under the 3% end to end that a fast path must (bench/ddpm_throughput.py --parts
kernels, an AVX2 EPYC): a one-pass C version of the DDPM, DDIM and DPM-Solver++ steps (0.2-0.5 ms saved per step on
64 images against 1.75 s of U-Net: 0.03%; under 0.5% even at 100 ms of U-Net), and sampling's convolutions on
weights reordered once for oneDNN with the residual add fused (1.4-2.0% slower than nn.Conv2d in float32; bf16 on
such a CPU has no oneDNN reorder).
"""
import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import fcntl                                     # POSIX: a lock file makes concurrent first uses build once
except ImportError:                                  # Windows: no lock (two first uses may both build; each moves a
    fcntl = None                                     # whole file into place, so either build is loaded whole)

SOURCES = [Path(__file__).with_name("group_norm_silu.c")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"] + (
    ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])   # AVX-512: 11% faster here
OFF_VALUES = ("0", "off", "false", "no")


def switched_on(value: str | None) -> bool:
    """GENLAB_KERNELS: 0, off, false or no (any case) turn every kernel off; unset or anything else leaves them on."""
    return (value or "").strip().lower() not in OFF_VALUES


enabled = switched_on(os.environ.get("GENLAB_KERNELS"))  # the one place the variable is read; False: PyTorch's ops
use = {"group_norm_silu": True}   # each fast path alone (bench/ddpm_throughput.py's ablations)
MAX_SAMPLE_ELEMENTS = 2 ** 24  # C x H x W; larger samples take PyTorch's ops (the kernel buffers a sample per thread)
# The dtypes the kernel runs for: bf16, where PyTorch's channels_last GroupNorm is slow. It computes float32 tensors
# too (the tests check its maths there, at float32's tolerances), but PyTorch's float32 GroupNorm and SiLU were as
# fast or faster end to end (issue 38, an AVX2 EPYC: 64-image sampling 2-2.5%, a training step 5%).
DTYPES = (torch.bfloat16,)


@functools.cache
def native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX-512 BW/VL/DQ or newer). Without it (AVX2) bf16 is
    emulated, its convolutions take 6-18x float32's time, and the kernel paid nothing (issue 38: 64-image sampling
    and a training step 2.4% faster on PyTorch's ops), so bf16 there takes PyTorch's ops too."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):       # a torch without this probe: PyTorch's ops, the safe side
        return False


def cache_dir() -> Path:
    """$GENLAB_KERNEL_CACHE, else $XDG_CACHE_HOME/genlab/kernels, else ~/.cache/genlab/kernels."""
    if folder := os.environ.get("GENLAB_KERNEL_CACHE"):
        return Path(folder).absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(cache) / "genlab" / "kernels").absolute()


def build_path(compiler: str) -> Path:
    """Where the build of these sources with this compiler, these flags and this CPU (-march=native) is cached."""
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else platform.processor()
    cpu_flags = next((line for line in cpu.splitlines() if line.startswith("flags")), cpu)
    text = "\n".join([*(source.read_text() for source in SOURCES), compiler, *FLAGS, platform.machine(), cpu_flags])
    return cache_dir() / f"kernels-{hashlib.sha256(text.encode()).hexdigest()[:16]}.so"


class BuildError(Exception):
    """Why the kernels cannot be built or loaded, in one line."""


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (created if absent) across processes: the second first use waits here while the
    first compiles, then finds its build. Without fcntl (Windows), no lock."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)          # released when the file closes, or the process dies
        yield


def compile_into(compiler: str, target: Path) -> None:
    """Compile SOURCES into `target`, built in a scratch folder beside it and moved into place whole (a process that
    loads `target` meanwhile sees the old file or the new, never half of one). A compiler that rejects -fopenmp
    (Apple's clang) gets a second try without it: single-threaded kernels, built once and cached like any other."""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        errors = []
        for flags in (FLAGS, [flag for flag in FLAGS if flag != "-fopenmp"]):
            result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(built), "-lm"],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0 and built.exists():
                os.replace(built, target)
                return
            errors.append((result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"])
        raise BuildError(f"{compiler} failed: {errors[0][-1]}")


def build(compiler: str | None = None) -> tuple[ctypes.CDLL, Path]:
    """The kernels loaded, and the file they came from: the cached build if it loads, else a fresh one (compiled
    once across processes, under a lock file beside it). Raises BuildError or OSError."""
    name = compiler or os.environ.get("CC") or "cc"
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"no C compiler ({name}) found; install one (e.g. apt-get install gcc) or set CC")
    target = build_path(found)
    with contextlib.suppress(OSError):
        return ctypes.CDLL(str(target)), target             # built before (by any process with this compiler and CPU)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        with contextlib.suppress(OSError):
            return ctypes.CDLL(str(target)), target         # another process built it while this one waited
        compile_into(found, target)                         # absent, or damaged: (re)built in its place
    return ctypes.CDLL(str(target)), target


_build_lock = threading.Lock()


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use, or None with one warning: PyTorch's ops then run instead. The
    lock makes threads that miss this cache together wait for one build (`_first_library` caches its result)."""
    with _build_lock:
        return _first_library()


@functools.cache
def _first_library() -> ctypes.CDLL | None:
    try:
        lib, _ = build()
    except Exception as error:     # any failure at all (compiler, cache folder, loader) falls back, never raises
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(f"genlab's C kernels are off ({reason}); PyTorch's ops run instead (slower, same results). "
                      "GENLAB_KERNELS=0 skips the build and this warning", RuntimeWarning, stacklevel=4)
        return None
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.group_norm_silu_forward.argtypes = [ptr] * 7 + [i64] * 4 + [f32] + [ctypes.c_int] * 3
    lib.group_norm_silu_backward.argtypes = [ptr] * 11 + [i64] * 4 + [ctypes.c_int] * 3
    return lib


def forget_library() -> None:
    """Drop the loaded kernels from this process's cache, so the next use builds or loads again (tests)."""
    with _build_lock:
        library.cache_clear()
        _first_library.cache_clear()


def kernel_applies(x: Tensor, groups: int, weight: Tensor | None, shift: Tensor | None = None) -> bool:
    if shift is not None and (shift.shape != x.shape[:2] or shift.dtype != x.dtype or shift.device != x.device):
        return False
    return (enabled and use["group_norm_silu"] and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in DTYPES and (x.dtype == torch.float32 or native_bf16())
            and 0 < x.numel() <= MAX_SAMPLE_ELEMENTS * x.shape[0] and x.shape[1] % groups == 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and weight is not None and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and not torch.jit.is_scripting() and not torch.compiler.is_compiling() and library() is not None)


class GroupNormSiLUFunction(torch.autograd.Function):
    """The C kernel with its hand-written backward (equations in group_norm_silu.c); first derivatives only."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor | None, weight: Tensor, bias: Tensor, groups: int, eps: float,
                silu: bool) -> Tensor:
        n, c, h, w = x.shape
        weight, bias = weight.detach().contiguous(), bias.detach().float().contiguous()
        shift = None if shift is None else shift.detach().float().contiguous()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, rstd = x.new_empty(n, groups, dtype=torch.float32), x.new_empty(n, groups, dtype=torch.float32)
        library().group_norm_silu_forward(x.data_ptr(), address(shift), y.data_ptr(), weight.data_ptr(),
                                          bias.data_ptr(), mean.data_ptr(), rstd.data_ptr(), n, h * w, c, groups, eps,
                                          x.dtype == torch.bfloat16, silu, torch.get_num_threads())
        ctx.save_for_backward(x, shift, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, shift, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dweight, dbias = x.new_empty(n, c, dtype=torch.float32), x.new_empty(n, c, dtype=torch.float32)
        dshift = None if shift is None else x.new_empty(n, c, dtype=torch.float32)
        library().group_norm_silu_backward(dy.data_ptr(), x.data_ptr(), address(shift), weight.data_ptr(),
                                           bias.data_ptr(), mean.data_ptr(), rstd.data_ptr(), dx.data_ptr(),
                                           address(dshift), dweight.data_ptr(), dbias.data_ptr(), n, h * w, c,
                                           ctx.groups, x.dtype == torch.bfloat16, ctx.silu, torch.get_num_threads())
        dshift = None if dshift is None else dshift.to(x.dtype)
        return dx, dshift, dweight.sum(0), dbias.sum(0), None, None, None


def address(tensor: Tensor | None) -> int | None:
    """A tensor's data pointer for the kernel, or NULL for none."""
    return None if tensor is None else tensor.data_ptr()


def group_norm_silu(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float = 1e-5,
                    silu: bool = True, shift: Tensor | None = None) -> Tensor:
    """GroupNorm (then SiLU if `silu`) of x, or of x + shift (an (N, C) shift per sample and channel: a U-Net's
    timestep embedding), computed in at least float32 and returned in x's dtype: the C kernel where it applies, else
    PyTorch's ops (the reference, which adds the shift in x's dtype)."""
    if kernel_applies(x, groups, weight, shift):
        return GroupNormSiLUFunction.apply(x, shift, weight, bias, groups, eps, silu)
    if shift is not None:
        x = x + shift[:, :, None, None]
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    y = F.group_norm(wide, groups, weight.to(wide.dtype), bias.to(wide.dtype), eps)
    return (F.silu(y) if silu else y).to(x.dtype)


# ---------------------------------------------------------------------------------------- ahead-of-time build
def main(argv: list[str] | None = None) -> int:
    """python -m core.kernels build: compile now (a Docker image, CI) rather than in the first training step or
    request, and print where the library is; exit 1 with the reason in one line if it cannot be built."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m core.kernels", description=main.__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--cc", help="the C compiler (default: $CC, else cc)")
    args = parser.parse_args(argv)
    try:
        _, path = build(args.cc)
    except Exception as error:
        print(f"genlab's C kernels cannot be built: {error}", file=sys.stderr)
        return 1
    note = "" if enabled else " (GENLAB_KERNELS is off: not used)"
    print(f"{path}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
