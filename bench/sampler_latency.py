"""The sampler app's start-up time and per-endpoint latency, measured as a user sees them.

    python bench/sampler_latency.py [--repeats 5]
    python bench/sampler_latency.py --fairness [--probes 20]      # small requests while a maximal diffusion runs
    python bench/sampler_latency.py --load [--clients 16 --rounds 4]   # every endpoint's defaults, many clients

Starts `python apps/sampler.py` on a free 127.0.0.1 port (offline), times it until the API answers, then calls each
endpoint through gradio_client once to warm up and `--repeats` times more, and prints the median and the range.
--fairness keeps a maximal diffusion job running (64 images x 250 DPM-Solver++ steps, the cost limit; restarted
when it ends) from one client while another client times `--probes` 1-image /gan_sample calls and 1-image 10-step
/ddpm_sample calls, and prints their median and p95 latency. --load runs `--clients` clients (one gradio_client
Client each, in threads), each calling every endpoint with the app's default inputs `--rounds` times, and counts
failures. Run it on a quiet machine: another job on the cores changes every figure.
"""
import argparse
import json
import os
import threading
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
SNEAKER = str(ROOT / "apps" / "examples" / "7-sneaker.png")
CALLS = [   # (what, api_name, arguments)
    ("GAN, 64 images (dcgan)", "/gan_sample", ("dcgan", 64, 0, -1)),
    ("GAN interpolation, 10 images + GIF (dcgan)", "/gan_interpolate", ("dcgan", 1, 2, 10, True, -1)),
    ("VAE, 64 samples", "/vae_sample", ("vae", 64, 0)),
    ("VAE reconstruction, 1 image", "/vae_reconstruct", ("vae", SNEAKER)),
    ("DDPM, 16 images, DPM-Solver++ SDE 20 steps (the tab's defaults)", "/ddpm_sample",
     ("ddpm", 16, 20, "dpm_solver_sde", 0, 0, -1, 1)),
    ("DDPM, 16 images, DPM-Solver++ 20 steps, autoguidance w = 1.25", "/ddpm_sample",
     ("ddpm", 16, 20, "dpm_solver", 0, 0, -1, 1.25)),
    ("DDPM, 16 images, DDIM 50 steps", "/ddpm_sample", ("ddpm", 16, 50, "ddim", 0, 0, -1, 1)),
    ("DDPM-cond, 16 images, DPM-Solver++ 20 steps, w = 2", "/ddpm_sample",
     ("ddpm-cond", 16, 20, "dpm_solver", 0, 0, -1, 2)),
    ("CycleGAN, 1 image", "/cyclegan_translate", ("cyclegan", SNEAKER, "a2b")),
    ("FGSM, 1 image", "/fgsm_attack", ("classifier", SNEAKER, "fgsm", 0.05, 0)),
    ("PGD-10, 1 image", "/fgsm_attack", ("classifier", SNEAKER, "pgd", 0.05, 0)),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    began = time.perf_counter()
    server = subprocess.Popen([sys.executable, "apps/sampler.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2).status == 200:
                return server, time.perf_counter() - began
        except OSError:
            if server.poll() is not None:
                sys.exit("the sampler exited during start-up")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fairness(url: str, probes: int) -> None:
    """p50/p95 of small requests while a maximal diffusion job keeps running."""
    stop, heavy_runs = threading.Event(), []

    def heavy() -> None:
        client = Client(url, verbose=False)
        while not stop.is_set():
            began = time.perf_counter()
            client.predict("ddpm", 64, 250, "dpm_solver", 0, 0, -1, 1, api_name="/ddpm_sample")
            heavy_runs.append(time.perf_counter() - began)

    worker = threading.Thread(target=heavy, daemon=True)
    worker.start()
    time.sleep(3)                                   # the maximal job is running
    client = Client(url, verbose=False)
    rows = [("1-image /gan_sample (dcgan)", "/gan_sample", lambda seed: ("dcgan", 1, seed, -1)),
            ("1-image 10-step /ddpm_sample (DDIM)", "/ddpm_sample", lambda seed: ("ddpm", 1, 10, "ddim", 0, seed, -1, 1))]
    print("| request, while 64 x 250 DPM-Solver++ runs | calls | median s | p95 s | max s |\n|---|---|---|---|---|")
    for what, api_name, arguments in rows:
        times = []
        for seed in range(probes):
            began = time.perf_counter()
            client.predict(*arguments(seed), api_name=api_name)
            times.append(time.perf_counter() - began)
        print(f"| {what} | {probes} | {statistics.median(times):.3f} | {percentile(times, 0.95):.3f} | "
              f"{max(times):.3f} |", flush=True)
    stop.set()
    worker.join(timeout=300)
    print(f"\nmaximal diffusion job: {len(heavy_runs)} runs, {statistics.median(heavy_runs):.1f} s each (median)")


def load(url: str, clients: int, rounds: int) -> None:
    """Every endpoint's default inputs (read from the app's config), from many clients at once."""
    config = json.loads(urllib.request.urlopen(f"{url}/config", timeout=10).read())
    by_id = {c["id"]: c for c in config["components"]}
    calls = {}
    for dependency in config["dependencies"]:
        if dependency.get("api_name") and dependency.get("api_visibility", "public") == "public":
            values = [by_id[i].get("props", {}).get("value") for i in dependency["inputs"]]
            calls["/" + dependency["api_name"]] = [handle_file(v["path"]) if isinstance(v, dict) and "path" in v
                                                   else v for v in values]
    failures, durations = [], []

    def user(k: int) -> None:
        client = Client(url, verbose=False)
        for _ in range(rounds):
            for api_name, arguments in calls.items():
                began = time.perf_counter()
                try:
                    client.predict(*arguments, api_name=api_name)
                except Exception as exc:                     # counted and shown below
                    failures.append(f"client {k} {api_name}: {type(exc).__name__}: {str(exc)[:120]}")
                durations.append(time.perf_counter() - began)

    began = time.perf_counter()
    threads = [threading.Thread(target=user, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = clients * rounds * len(calls)
    print(f"{clients} clients x {rounds} rounds x {len(calls)} endpoints = {total} calls in "
          f"{time.perf_counter() - began:.0f} s: {len(failures)} failures; latency median "
          f"{statistics.median(durations):.2f} s, p95 {percentile(durations, 0.95):.2f} s")
    for failure in failures[:10]:
        print("  " + failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fairness", action="store_true")
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    server, startup = start(port)
    try:
        if args.fairness or args.load:
            if args.fairness:
                fairness(f"http://127.0.0.1:{port}", args.probes)
            if args.load:
                load(f"http://127.0.0.1:{port}", args.clients, args.rounds)
            return
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        print(f"start-up until the API answers: {startup:.2f} s ({os.cpu_count()} CPU cores)\n")
        print("| request | first call (loads the model) s | median s | min-max s |\n|---|---|---|---|")
        for what, api_name, arguments in CALLS:
            call = lambda: client.predict(*[handle_file(a) if a == SNEAKER else a for a in arguments],
                                          api_name=api_name)
            began = time.perf_counter()
            call()
            first = time.perf_counter() - began
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                call()
                times.append(time.perf_counter() - began)
            print(f"| {what} | {first:.3f} | {statistics.median(times):.3f} | {min(times):.3f}-{max(times):.3f} |")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
