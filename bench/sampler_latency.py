"""The sampler app's start-up time and per-endpoint latency, measured as a user sees them.

    python bench/sampler_latency.py [--repeats 5]

Starts `python apps/sampler.py` on a free 127.0.0.1 port (offline), times it until the API answers, then calls each
endpoint through gradio_client once to warm up and `--repeats` times more, and prints the median and the range.
Run it on a quiet machine: another job on the cores changes every figure.
"""
import argparse
import os
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
    ("DDPM, 16 images, DPM-Solver++ 20 steps", "/ddpm_sample", ("ddpm", 16, 20, "dpm_solver", 0, 0, -1, 1)),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    server, startup = start(port)
    try:
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
