"""The C kernel against PyTorch's ops: GroupNorm+SiLU (values and gradients in both dtypes, where it applies); and its
build: every failure falls back with one warning, concurrent first uses compile once, GENLAB_KERNELS=0 turns it off."""
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core import kernels
from core.models.unet import UNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def float32_too(monkeypatch):
    """The kernel's maths checked in float32 as well, at float32's tolerances, and in bf16 on any CPU: the U-Net
    calls it for bf16 only (kernels.DTYPES), on CPUs where bf16 is native, but it computes the same everywhere."""
    monkeypatch.setattr(kernels, "DTYPES", (torch.float32, torch.bfloat16))
    monkeypatch.setattr(kernels, "native_bf16", lambda: True)


@pytest.mark.parametrize("native", (True, False))
def test_float32_and_emulated_bf16_take_pytorchs_ops(monkeypatch, native):
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "native_bf16", lambda: native)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert kernels.DTYPES == (torch.bfloat16,) and kernels.kernel_applies(x.bfloat16(), 4, torch.ones(8)) == native
    assert not kernels.kernel_applies(x, 4, torch.ones(8))


def reference(x, groups, weight, bias, silu):
    """The same maths in float64 with PyTorch's ops, and its gradients."""
    y = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    return F.silu(y) if silu else y


def kernel_and_reference(dtype, shape, groups, silu, threads=2, scale=3.0, offset=2.0):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = (torch.randn(shape) * scale + offset).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.randn(c, requires_grad=True), torch.randn(c, requires_grad=True)
    dy = torch.randn(shape).to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = kernels.group_norm_silu(x, groups, weight, bias, silu=silu)
        y.backward(dy)
    finally:
        torch.set_num_threads(previous)
    assert y.grad_fn.name() == "GroupNormSiLUFunctionBackward"        # the kernel ran, not the fallback
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    expected = reference(x64, groups, w64, b64, silu)
    expected.backward(dy.double())
    return (y, x.grad, weight.grad, bias.grad), (expected, x64.grad, w64.grad, b64.grad)


@pytest.mark.parametrize("silu", (True, False))
@pytest.mark.parametrize("shape, groups", [((4, 32, 28, 28), 8), ((3, 96, 7, 7), 8), ((5, 6, 3, 5), 6),
                                           ((1, 12, 1, 1), 3)])
def test_float32_kernel_equals_the_reference_in_values_and_gradients(shape, groups, silu):
    for got, expected in zip(*kernel_and_reference(torch.float32, shape, groups, silu)):
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def test_float32_statistics_stay_accurate_when_the_mean_dwarfs_the_spread():
    """Mean 300, standard deviation 0.05: the variance from one pass of shifted sums stays float32-accurate."""
    (y, dx, *_), (y64, dx64, *_) = kernel_and_reference(torch.float32, (2, 16, 14, 14), 4, False, scale=0.05,
                                                         offset=300.0)
    torch.testing.assert_close(y.double(), y64, atol=2e-3, rtol=1e-3)        # x itself is stored to 2e-5 (0.04%)
    torch.testing.assert_close(dx.double(), dx64, atol=0.02, rtol=1e-3)


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("silu", (True, False))
def test_bf16_kernel_is_the_float32_maths_rounded_once(silu, threads):
    """bf16 in and out, float32 inside: the output is within one bf16 rounding (2^-8 relative) of the exact value;
    weight and bias gradients (float32) are as exact as in float32 given the same bf16 input."""
    (y, dx, dweight, dbias), (y64, dx64, dweight64, dbias64) = kernel_and_reference(
        torch.bfloat16, (6, 64, 14, 14), 8, silu, threads)
    assert ((y.double() - y64).abs() <= y64.abs() * 2 ** -8 + 1e-6).all()
    torch.testing.assert_close(dx.double(), dx64, atol=0.02, rtol=2 ** -7)
    torch.testing.assert_close(dweight.double(), dweight64, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dbias.double(), dbias64, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("channels", (32, 12))                  # 16 channels per register, and the scalar loops
def test_silu_holds_far_out_in_both_tails(dtype, channels):
    """γ up to ±2000 drives z = GN(x) far beyond e^z's float32 range on both sides (e^88 overflows): SiLU(z) is
    still z σ(z): ≈ z for large z, ≈ 0 for very negative z, never inf or NaN."""
    torch.manual_seed(0)
    x = torch.randn(2, channels, 5, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.linspace(-2000, 2000, channels)
    bias = torch.zeros(channels)
    with torch.no_grad():
        y = kernels.group_norm_silu(x, 4, weight, bias)
        expected = F.silu(F.group_norm(x.double(), 4, weight.double(), bias.double(), 1e-5))
    assert kernels.kernel_applies(x, 4, weight) and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), expected, atol=1e-3, rtol=2 ** -8 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_a_per_sample_shift_is_added_before_normalising_with_its_gradient(dtype):
    """GN(x + t) with t of shape (N, C) (a U-Net's timestep embedding): values and the gradients of x, t, γ, β
    against float64 (bf16: within its rounding), and the same as PyTorch's ops adding t first."""
    torch.manual_seed(0)
    shape = (3, 32, 7, 9)
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    shift = (torch.randn(3, 32) * 2).to(dtype).requires_grad_()
    weight, bias = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    dy = torch.randn(shape).to(dtype)
    y = kernels.group_norm_silu(x, 8, weight, bias, shift=shift)
    assert y.grad_fn.name() == "GroupNormSiLUFunctionBackward" and y.dtype == dtype
    y.backward(dy)
    x64, s64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, shift, weight, bias))
    expected = reference(x64 + s64[:, :, None, None], 8, w64, b64, True)
    expected.backward(dy.double())
    loose = dtype == torch.bfloat16
    for got, want in ((y, expected), (x.grad, x64.grad), (shift.grad, s64.grad), (weight.grad, w64.grad),
                      (bias.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, **(dict(atol=0.05, rtol=2 ** -6) if loose else
                                                          dict(atol=5e-5, rtol=1e-4)))
    assert shift.grad.dtype == dtype
    torch.testing.assert_close(shift.grad.double(), x.grad.double().sum((2, 3)), **(dict(atol=0.3, rtol=0.02) if loose
                                                                                  else dict(atol=1e-4, rtol=1e-4)))
    ops = kernels.group_norm_silu(x.contiguous(), 8, weight, bias, shift=shift)        # NCHW: PyTorch's ops
    assert ops.grad_fn.name() != "GroupNormSiLUFunctionBackward"
    torch.testing.assert_close(ops.double(), y.double(), **(dict(atol=0.05, rtol=0.02) if loose else
                                                            dict(atol=1e-5, rtol=1e-4)))
    assert not kernels.kernel_applies(x, 8, weight, shift.float() if loose else shift.double())  # another dtype
    assert not kernels.kernel_applies(x, 8, weight, shift[:, :16])                                # another shape


def test_the_kernel_is_used_only_where_it_applies(monkeypatch):
    weight = torch.ones(8)
    last = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert kernels.kernel_applies(last, 4, weight)
    assert not kernels.kernel_applies(last.contiguous(), 4, weight)                  # NCHW: PyTorch's ops
    assert not kernels.kernel_applies(last.double(), 4, weight)                      # float64
    assert not kernels.kernel_applies(last, 4, weight.bfloat16())                    # a module cast to bf16
    assert not kernels.kernel_applies(last, 3, weight)                               # 8 channels in 3 groups
    assert not kernels.kernel_applies(last[:0], 4, weight)                           # an empty batch
    assert not kernels.kernel_applies(last[:, :, :0], 4, weight)                     # empty images
    monkeypatch.setattr(kernels, "MAX_SAMPLE_ELEMENTS", 8 * 4 * 4 - 1)
    assert not kernels.kernel_applies(last, 4, weight)                               # a sample too large to buffer
    monkeypatch.undo()
    nchw = kernels.group_norm_silu(last.contiguous().requires_grad_(), 4, weight, torch.zeros(8))
    assert nchw.grad_fn.name() != "GroupNormSiLUFunctionBackward"
    torch.testing.assert_close(nchw, kernels.group_norm_silu(last, 4, weight, torch.zeros(8)))
    with pytest.raises(RuntimeError, match="divisible"):                             # PyTorch's own message
        kernels.group_norm_silu(last, 3, weight, torch.zeros(8))


def test_inference_mode_and_a_second_derivative():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(8), torch.randn(8)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.group_norm_silu(x, 4, weight, bias),
                                   reference(x, 4, weight, bias, True).float())
    x.requires_grad_()
    y = kernels.group_norm_silu(x, 4, weight, bias)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)       # dy = 2y depends on x
    with pytest.raises(RuntimeError, match="differentiate twice"):             # a clear refusal, not a wrong value
        grad.sum().backward()


# ------------------------------------------------------------------------------ building: every failure falls back
@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache of the test's own, and this process's loaded kernels forgotten before and after."""
    monkeypatch.setenv("GENLAB_KERNEL_CACHE", str(tmp_path / "cache"))
    kernels.forget_library()
    yield tmp_path / "cache"
    kernels.forget_library()


def counting_compiler(folder, fail_on="", sleep=0.0):
    """A CC that appends each call's arguments to folder/calls, then fails if any argument is `fail_on`, else runs
    the real compiler. Returns (its path, a function giving the calls so far)."""
    calls, script = folder / "calls", folder / "counting-cc"
    check = f'for a in "$@"; do [ "$a" = "{fail_on}" ] && exit 1; done\n' if fail_on else ""
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nsleep {sleep}\n{check}exec {shutil.which("cc")} "$@"\n')
    script.chmod(0o755)
    return str(script), lambda: calls.read_text().splitlines() if calls.exists() else []


def fallback_computes_the_same():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(8), torch.randn(8)
    y = kernels.group_norm_silu(x, 4, weight, bias)
    torch.testing.assert_close(y, reference(x, 4, weight, bias, True).float())


def test_without_a_compiler_it_warns_once_and_computes_the_same(monkeypatch, fresh, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="no C compiler .*no-such-compiler.* found"):
        fallback_computes_the_same()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # once: the second call is silent
        fallback_computes_the_same()


@pytest.mark.parametrize("compiler", ("false", "out-of-cheese"))
def test_a_failing_compiler_warns_once_with_its_message(monkeypatch, fresh, tmp_path, compiler):
    if compiler == "out-of-cheese":
        compiler = tmp_path / "cc"
        compiler.write_text("#!/bin/sh\necho 'cc: fatal error: out of cheese' >&2\nexit 1\n")
        compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with pytest.warns(RuntimeWarning, match="kernels are off .*(exit 1|out of cheese)") as caught:
        fallback_computes_the_same()
        fallback_computes_the_same()
    assert len(caught) == 1
    assert not list(fresh.rglob("*.so"))                                # nothing half-built left in the cache


@pytest.mark.parametrize("blocked", ("a file", "not writable"))
def test_a_cache_folder_it_cannot_write_warns_once(monkeypatch, fresh, tmp_path, blocked):
    """A cache path under a file, or a folder only readable (as root, which may write anywhere: a file again)."""
    if blocked == "a file" or os.geteuid() == 0:
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("GENLAB_KERNEL_CACHE", str(tmp_path / "file" / "kernels"))
    else:
        fresh.mkdir()
        fresh.chmod(0o500)
    try:
        with pytest.warns(RuntimeWarning, match="kernels are off") as caught:
            fallback_computes_the_same()
            fallback_computes_the_same()
    finally:
        fresh.exists() and fresh.chmod(0o700)
    assert len(caught) == 1


def test_any_other_failure_warns_instead_of_raising(monkeypatch, fresh):
    monkeypatch.setattr(kernels, "build", lambda: 1 / 0)
    with pytest.warns(RuntimeWarning, match="kernels are off .*division by zero"):
        assert kernels.library() is None


def test_a_damaged_cached_build_is_rebuilt_in_its_place(monkeypatch, fresh, tmp_path):
    """A damaged file in the build's place (genlab never writes one, it moves whole builds there; a disk can) is
    rebuilt and loaded in the same call, silently."""
    compiler, calls = counting_compiler(tmp_path)
    monkeypatch.setenv("CC", compiler)
    target = kernels.build_path(compiler)
    assert target.parent == fresh.absolute()
    fresh.mkdir()
    target.write_bytes(b"not a shared object")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.library() is not None
    assert len(calls()) == 1 and target.stat().st_size > 1000


def test_a_compiler_without_openmp_builds_once_without_it(monkeypatch, fresh, tmp_path):
    """Apple's clang rejects -fopenmp: the second try builds single-threaded kernels, and a later process (here:
    the loaded library forgotten) loads that build instead of paying the failed compile again."""
    compiler, calls = counting_compiler(tmp_path, fail_on="-fopenmp")
    monkeypatch.setenv("CC", compiler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.library() is not None
        kernels.forget_library()
        assert kernels.library() is not None
    assert len(calls()) == 2 and "-fopenmp" in calls()[0] and "-fopenmp" not in calls()[1]
    (y, *_), (expected, *_) = kernel_and_reference(torch.float32, (2, 16, 5, 5), 4, True)
    torch.testing.assert_close(y.double(), expected, atol=2e-5, rtol=1e-4)


def test_two_threads_at_once_try_one_build_and_warn_once(monkeypatch, fresh, tmp_path):
    compiler, calls = counting_compiler(tmp_path, fail_on="-shared", sleep=0.5)     # fails, slowly
    monkeypatch.setenv("CC", compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=kernels.library) for _ in range(2)]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
    assert len(calls()) == 2 and len(caught) == 1             # one build: with -fopenmp, then without


LOAD = ("import warnings; from core import kernels; warnings.simplefilter('error', RuntimeWarning); "
        "print(kernels.library() is not None)")


def python(code, **env):
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_processes_at_once_compile_once_and_both_load(fresh, tmp_path):
    compiler, calls = counting_compiler(tmp_path, sleep=1.0)
    first, second = (python(LOAD, CC=compiler, GENLAB_KERNEL_CACHE=str(fresh)) for _ in range(2))
    assert [process.communicate(timeout=120)[0].strip() for process in (first, second)] == ["True", "True"]
    assert len(calls()) == 1 and len(list(fresh.glob("*.so"))) == 1
    build = subprocess.run([sys.executable, "-m", "core.kernels", "build"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "CC": compiler, "GENLAB_KERNEL_CACHE": str(fresh)})
    assert build.returncode == 0 and build.stdout.strip() == str(next(fresh.glob("*.so")))
    assert len(calls()) == 1                                  # the ahead-of-time build found it built


def test_the_build_command_fails_in_one_line(tmp_path):
    build = subprocess.run([sys.executable, "-m", "core.kernels", "build"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "CC": "false", "GENLAB_KERNEL_CACHE": str(tmp_path)})
    assert build.returncode == 1 and build.stdout == ""
    (line,) = build.stderr.strip().splitlines()
    assert line == f"genlab's C kernels cannot be built: {shutil.which('false')} failed: exit 1"


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("FALSE", False), (" no ", False), ("1", True),
                                       ("", True), (None, True), ("on", True)])
def test_the_switch_reads_the_usual_words(value, on):
    assert kernels.switched_on(value) is on


def test_genlab_kernels_off_gives_pytorchs_ops_and_builds_nothing(tmp_path):
    compiler, calls = counting_compiler(tmp_path)
    code = ("import torch; from core import kernels; kernels.native_bf16 = lambda: True; "    # as on an AVX-512 CPU
            "x = torch.randn(2, 8, 4, 4).bfloat16().contiguous(memory_format="
            "torch.channels_last).requires_grad_(); y = kernels.group_norm_silu(x, 4, torch.ones(8), torch.zeros(8)); "
            "print(kernels.enabled, y.grad_fn.name())")
    process = python(code, GENLAB_KERNELS="off", CC=compiler, GENLAB_KERNEL_CACHE=str(tmp_path / "cache"))
    out, err = process.communicate(timeout=120)
    assert out.split() == ["False", "ToCopyBackward0"], err             # the cast back to bf16 after F.silu
    assert calls() == [] and not (tmp_path / "cache").exists()


def test_the_cache_folder_is_chosen_by_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GENLAB_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.cache_dir() == tmp_path / "genlab" / "kernels"
    monkeypatch.setenv("GENLAB_KERNEL_CACHE", str(tmp_path / "mine"))
    assert kernels.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("bf16", (False, True))
def test_unet_in_channels_last_with_the_kernel_equals_pytorchs_ops(monkeypatch, bf16):
    """The U-Net's forward and parameter gradients, kernel on (channels_last) against kernel off."""
    torch.manual_seed(0)
    net = UNet(channels=(16, 32), groups=4).to(memory_format=torch.channels_last)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(kernels, "enabled", enabled)
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, torch.tensor([3, 50, 500, 900]))
        out.float().square().mean().backward()
        results.append((out.detach().float(), [p.grad.clone() for p in net.parameters()]))
    (out, grads), (out_ref, grads_ref) = results
    tolerance = dict(atol=0.05, rtol=0.05) if bf16 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, out_ref, **tolerance)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, **(dict(atol=0.05, rtol=0.1) if bf16 else tolerance))
