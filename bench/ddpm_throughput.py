"""Our U-Net and schedulers against diffusers', side by side in one run (issue: DDPM benchmark).

    python bench/ddpm_throughput.py [--repeats 3] [--threads 2] [--parts networks,schedulers,profile,kernels]
                                    [--no-kernel [NAMES]]

1. Training images/s at batch 128 (forward, MSE, backward, Adam step) of core.models.unet.UNet (in channels_last,
   as genlab trains and samples it) and a diffusers UNet2DModel with the same block layout and the same parameter
   count (in its default NCHW, and in channels_last as a second peer), in float32 and in bf16 autocast.
2. Seconds to sample 64 images with 50 DDIM steps, each network driven by its own library's DDIMScheduler.
3. Microseconds per scheduler `step` on a 64x1x32x32 tensor, ours vs diffusers, for DDPM, DDIM and DPM-Solver++
   (each a 50-step schedule, set_timesteps included), and the cost of the noise draw that a DDPM step must make.
4. Achieved GFLOP/s of training and sampling, ours and diffusers' (the same FLOPs, counted by
   torch.utils.flop_counter), against this machine's measured matmul peak (a 2048^3 product in float32 and bf16,
   through BLAS and through oneDNN), and the rate that 1.5x diffusers' training speed and half its sampling time
   would need at these FLOPs. The CPU's name is printed first: bf16 figures differ most with and without AMX.
5. (--parts profile) Where the time of a training step and of sampling goes, by torch.profiler's self CPU time:
   the convolutions (forward and backward, oneDNN in both libraries) against the rest, for ours and diffusers'.
   Our convolutions' time over diffusers' whole time is the least our ratio could be at this architecture if every
   other op took no time.
6. (--parts kernels) What each of core/kernels.py's fast paths pays end to end, each switched off alone against
   all on, alternating in one process: 64-image sampling of the shipped checkpoints/ddpm model with its own sampler
   and steps and with DDIM 50 (--steps N: N steps for both), and a training step at batch 128, in float32 and bf16
   (--cases: only the rows whose label contains one of these, separated by ;). Medians of --repeats timings and of
   the per-round ratios off / on (> 1: the fast path pays); --clock cpu counts this process's CPU seconds instead of
   wall-clock seconds, steadier on a shared machine at --threads 1. The table in docs and the README:
       python bench/ddpm_throughput.py --parts kernels --threads 1 --repeats 5 --steps 4 --clock cpu
Each other figure is the best of --repeats timings, alternating ours and theirs. Run on a quiet machine.
--no-kernel runs our U-Net on PyTorch's plain ops: GroupNorm and SiLU without the C kernel of core/kernels.py;
--no-kernel NAMES switches off only those of core.kernels.use (comma-separated).
"""
import argparse
import platform
import statistics
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from core import hub, kernels, schedulers
from core.models.unet import UNet

CHANNELS, LAYERS, SIZE = (32, 64, 128), 1, 28


def networks():
    """Ours in the memory format genlab trains and samples it in (channels_last, `DDPM.channels_last`); diffusers'
    in its default NCHW and, as a second peer, in channels_last too."""
    torch.manual_seed(0)
    ours = UNet(channels=CHANNELS, layers_per_block=LAYERS).to(memory_format=torch.channels_last)
    peer = lambda layout: diffusers.UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=CHANNELS, layers_per_block=LAYERS,
        norm_num_groups=8, attention_head_dim=32,
        down_block_types=("DownBlock2D",) * (len(CHANNELS) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(CHANNELS) - 1)).to(memory_format=layout)
    theirs, theirs_last = peer(torch.contiguous_format), peer(torch.channels_last)
    return {"ours": (ours, ours), "diffusers": (theirs, lambda x, t: theirs(x, t).sample),
            "diffusers, channels_last": (theirs_last, lambda x, t: theirs_last(x, t).sample)}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_steps(net, forward, bf16: bool, steps: int = 3, batch: int = 128):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, t = torch.randn(batch, 1, SIZE, SIZE), torch.randint(0, 1000, (batch,))

    def run():
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = forward(x, t)
            loss = F.mse_loss(out.float(), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    run()                                   # warm-up (allocator, oneDNN kernels)
    return run


def sample_64(forward, scheduler, bf16: bool):
    def run():
        x = torch.randn(64, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        scheduler.set_timesteps(50)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for t in scheduler.timesteps:
                x = scheduler.step(forward(x, t).float(), t, x).prev_sample
    return run


def step_time(scheduler, repeats: int, n: int = 50) -> float:
    x, out = torch.randn(64, 1, 32, 32), torch.randn(64, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)

    def run():
        scheduler.set_timesteps(n)
        for t in scheduler.timesteps:
            scheduler.step(out, t, x, generator=generator)
    run()
    return best(run, repeats) / n * 1e6


def matmul_peak(dtype) -> float:
    """GFLOP/s of the faster of two 2048^3 matrix products: torch.mm (MKL or OpenBLAS, which may not use every
    instruction of an AMD CPU) and the same product as a 1x1 convolution in channels_last (oneDNN, which the U-Net's
    convolutions use)."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    x = a.reshape(2, 32, 32, 2048).permute(0, 3, 1, 2)                   # channels_last (2, 2048, 32, 32)
    w = b.t().reshape(2048, 2048, 1, 1).contiguous(memory_format=torch.channels_last)
    peaks = []
    for product in (lambda: torch.mm(a, b), lambda: F.conv2d(x, w)):
        product()
        peaks.append(2 * 2048 ** 3 / (best(lambda: [product() for _ in range(5)], 3) / 5) / 1e9)
    return max(peaks)


def noise_draw_time(repeats: int, n: int = 50) -> float:
    """µs for the one draw of z ~ N(0, I) that a stochastic step makes (both libraries make the same draw from the
    same generator, which bit-for-bit parity requires): the floor of a DDPM step's time."""
    generator = torch.Generator().manual_seed(0)
    run = lambda: [torch.randn(64, 1, 32, 32, generator=generator) for _ in range(n)]
    run()
    return best(run, repeats) / n * 1e6


def cpu_name() -> str:
    """The CPU's model name, and whether it has AMX (bf16 tile matrix units, which oneDNN uses for bf16
    convolutions): bf16 figures differ most between machines with and without it."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    return f"{name}, {'with' if ' amx_bf16' in info else 'without'} AMX"


def network_rows(args) -> list[str]:
    nets = networks()
    params = {k: sum(p.numel() for p in net.parameters()) for k, (net, _) in nets.items()}
    print(f"parameters: ours {params['ours']:,}, diffusers {params['diffusers']:,}")
    results = {}
    for bf16 in (False, True):
        runs = {k: train_steps(net, fwd, bf16) for k, (net, fwd) in nets.items()}
        timings = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, run in runs.items():
                timings[k].append(best(run, 1))
        for k, t in timings.items():
            results[("train", bf16, k)] = 3 * 128 / min(t)
        samplers = {k: sample_64(forward, (schedulers if k == "ours" else diffusers).DDIMScheduler(), bf16)
                    for k, (_, forward) in nets.items()}
        for k, run in samplers.items():
            run()
        timings = {k: [] for k in samplers}
        for _ in range(args.repeats):
            for k, run in samplers.items():
                timings[k].append(best(run, 1))
        for k, t in timings.items():
            results[("sample", bf16, k)] = min(t)
    rows = []
    for kind, label, unit in (("train", "training images/s, batch 128", "{:.0f}"),
                              ("sample", "seconds for 64 images, DDIM 50 steps", "{:.2f}")):
        for bf16 in (False, True):
            ours, theirs, last = (results[(kind, bf16, k)] for k in nets)
            rows.append(f"| {label} | {'bf16 autocast' if bf16 else 'float32'} | {unit.format(ours)} | "
                        f"{unit.format(theirs)} | {ours / theirs:.2f}x | {unit.format(last)} | {ours / last:.2f}x |")
    net, forward = nets["ours"]
    x, t = torch.randn(128, 1, SIZE, SIZE), torch.randint(0, 1000, (128,))
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(forward(x, t), x).backward()
    train_flops = counter.get_total_flops() / 128                                  # per image, forward + backward
    with FlopCounterMode(display=False) as counter:
        forward(x[:64], t[:64])
    sample_flops = counter.get_total_flops() * 50                                  # 64 images, 50 steps
    print(f"our U-Net: {train_flops / 1e9:.3f} GFLOP per training image (forward + backward), "
          f"{sample_flops / 1e12:.2f} TFLOP for 64 images in 50 steps")
    for bf16, peak in ((False, matmul_peak(torch.float32)), (True, matmul_peak(torch.bfloat16))):
        name = "bf16" if bf16 else "fp32"
        train = {k: train_flops * results[("train", bf16, k)] / 1e9 for k in ("ours", "diffusers")}
        sample = {k: sample_flops / results[("sample", bf16, k)] / 1e9 for k in ("ours", "diffusers")}
        print(f"{name}: matmul peak {peak:.0f} GFLOP/s. Training: ours {train['ours']:.0f} GFLOP/s "
              f"({train['ours'] / peak:.0%} of it), diffusers {train['diffusers']:.0f}; 1.5x diffusers' images/s "
              f"at these FLOPs needs {1.5 * train['diffusers']:.0f} ({1.5 * train['diffusers'] / peak:.0%}). "
              f"Sampling: ours {sample['ours']:.0f} ({sample['ours'] / peak:.0%}), diffusers "
              f"{sample['diffusers']:.0f}; half diffusers' time needs {2 * sample['diffusers']:.0f} "
              f"({2 * sample['diffusers'] / peak:.0%})")
    return rows


def convolution_share(run) -> tuple[float, float]:
    """(all, convolutions) self CPU ms of one call of run, by torch.profiler (forward and backward convolutions)."""
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run()
    events = profiler.key_averages()
    return (sum(e.self_cpu_time_total for e in events) / 1e3,
            sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / 1e3)


def profile_rows(args) -> list[str]:
    nets = {k: v for k, v in networks().items() if k != "diffusers, channels_last"}
    rows = []
    for label, make in (("ms per training step (profiled), batch 128", lambda k, net, fwd, bf16: train_steps(
                            net, fwd, bf16, steps=1)),
                        ("ms for 64 images, DDIM 50 steps (profiled)", lambda k, net, fwd, bf16: sample_64(
                            fwd, (schedulers if k == "ours" else diffusers).DDIMScheduler(), bf16))):
        for bf16 in (False, True):
            (ours, ours_conv), (theirs, theirs_conv) = (convolution_share(make(k, net, fwd, bf16))
                                                        for k, (net, fwd) in nets.items())
            precision = "bf16 autocast" if bf16 else "float32"
            rows += [f"| {label} | {precision} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x | | |",
                     f"| of which convolutions | {precision} | {ours_conv:.0f} ({ours_conv / ours:.0%}) | "
                     f"{theirs_conv:.0f} ({theirs_conv / theirs:.0%}) | {ours_conv / theirs_conv:.2f}x | | |",
                     f"| ours / diffusers if all but our convolutions took no time | {precision} | | | "
                     f"{ours_conv / theirs:.2f}x | | |"]
    return rows


def scheduler_rows(args) -> list[str]:
    rows = []
    for name in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"):
        mine, theirs = [], []
        for _ in range(args.repeats):                  # alternate, so a noisy moment hits both
            mine.append(step_time(getattr(schedulers, name)(), 1))
            theirs.append(step_time(getattr(diffusers, name)(), 1))
        rows.append(f"| {name}.step µs, 64x1x32x32 | float32 | {min(mine):.0f} | {min(theirs):.0f} | "
                    f"{min(mine) / min(theirs):.2f}x | | |")
    rows.append(f"| of which the noise draw z ~ N(0, I) (DDPM) | float32 | {noise_draw_time(args.repeats):.0f} |"
                + " |" * 4)
    return rows


def kernel_workloads(args) -> dict:
    """name -> (a function making its run, which kernels it can use here): the shipped DDPM's sampling and our
    U-Net's training step (made only if --cases picks it: a training step warms up as it is made)."""
    model = hub.load_model("ddpm")
    own, steps, ddim_steps = model.default_sampler, args.steps or model.config.eval_steps, args.steps or 50
    workloads = {}
    for precision in ("float32", "bf16"):
        def sampling(sampler, n_steps, precision=("bf16" if precision == "bf16" else "no")):
            return lambda: lambda: model.set_precision(precision).sample(64, n_steps, sampler, seed=0)

        def training(bf16=precision == "bf16"):
            torch.manual_seed(0)
            net = UNet(channels=CHANNELS, layers_per_block=LAYERS).to(memory_format=torch.channels_last)
            return train_steps(net, net, bf16, steps=1)
        workloads[f"64 images, {own} {steps} steps, {precision}"] = (sampling(None, steps), set(kernels.use))
        workloads[f"64 images, DDIM {ddim_steps} steps, {precision}"] = (sampling("ddim", ddim_steps), set(kernels.use))
        workloads[f"training step, batch 128, {precision}"] = (training, {"group_norm_silu"})
    return {label: workload for label, workload in workloads.items()
            if not args.cases or any(case in label for case in args.cases.split(";"))}


def kernel_rows(args) -> list[str]:
    """Each kernel off alone against all on: seconds (medians) and the median per-round ratio off / on."""
    variants = {"all on": set(), **{f"{name} off": {name} for name in kernels.use}}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    for label, (make, used) in kernel_workloads(args).items():
        run = make()
        times = {variant: [] for variant in variants if not variants[variant] or variants[variant] & used}
        for round in range(args.repeats + 1):                        # alternate, so a noisy moment hits every one
            for variant in times:
                if round == 0 and variant not in ("all on", list(times)[-1]):
                    continue                                         # warm-ups: the kernels' build, PyTorch's ops
                for name in kernels.use:
                    kernels.use[name] = name not in variants[variant]
                start = clock()
                run()
                seconds = clock() - start
                if round > 0:
                    times[variant].append(seconds)
        kernels.use.update(dict.fromkeys(kernels.use, True))
        base = times["all on"]
        cells = [f"{statistics.median(base):.2f} s"]
        for variant in list(variants)[1:]:
            if variant not in times:
                cells.append("not used")
                continue
            ratio = statistics.median(t / b for t, b in zip(times[variant], base))
            cells.append(f"{statistics.median(times[variant]):.2f} s ({ratio:.3f}x)")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print(f"\n{args.clock} seconds, medians of {args.repeats}; in brackets the median ratio off / on of each round")
    print("\n| | " + " | ".join(variants) + " |\n|---|" + "---|" * len(variants) + "\n" + "\n".join(rows))
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--parts", default="networks,schedulers",
                        help="comma-separated: networks (1, 2, 4), schedulers (3), profile (5), kernels (6)")
    parser.add_argument("--steps", type=int, default=0,
                        help="kernels: sampling steps for both samplers (default: the model's eval_steps, DDIM 50)")
    parser.add_argument("--cases", default="",
                        help="kernels: only the rows whose label contains one of these (separated by ;)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="kernels: wall-clock seconds, or this process's CPU seconds (a shared machine, 1 thread)")
    parser.add_argument("--no-kernel", nargs="?", const=",".join(kernels.use), default="",
                        help="PyTorch's plain ops: no C kernel; or only those named, "
                             f"comma-separated, of {', '.join(kernels.use)}")
    args = parser.parse_args()
    makers = {"networks": network_rows, "profile": profile_rows, "schedulers": scheduler_rows, "kernels": kernel_rows}
    parts, off = args.parts.split(","), set(filter(None, args.no_kernel.split(",")))
    if unknown := set(parts) - set(makers):
        parser.error(f"--parts takes {', '.join(makers)}; got {', '.join(sorted(unknown))}")
    if unknown := off - set(kernels.use):
        parser.error(f"--no-kernel takes {', '.join(kernels.use)}; got {', '.join(sorted(unknown))}")
    kernels.use.update({name: name not in off for name in kernels.use})
    if args.threads:
        torch.set_num_threads(args.threads)
    state = ", ".join(f"{name} {'on' if on else 'off'}" for name, on in kernels.use.items())
    print(f"{torch.get_num_threads()} threads, core.kernels: {state}, CPU: {cpu_name()}")
    rows = [row for part, make in makers.items() if part in parts for row in make(args)]
    if rows:
        print("\n| | precision | ours | diffusers | ours / diffusers | diffusers, channels_last | ours / that |\n"
              "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
