"""A run's checkpoints: written atomically (a hidden folder, then one rename, then latest.json) every few steps, with
the optimizers' states and every process's RNG state, so `python -m core.train --resume RUN` continues the same
data order and random streams (core.train)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from torch import Tensor

from core.config import save_json
from core.model import TrainableModel


def pack(obj, tensors: dict[str, Tensor], key: str):
    """Split a nested state (optimizer state_dict, RNG) into JSON and a flat dict of tensors for safetensors."""
    if isinstance(obj, Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, pack(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [pack(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    return obj


def unpack(obj, tensors: dict[str, Tensor]):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unpack(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj


def rng_states(accelerator: Accelerator) -> Tensor:
    """Every process's torch CPU generator state, (P, L) uint8: all randomness in genlab comes from torch."""
    state = torch.get_rng_state().unsqueeze(0).to(accelerator.device)
    return accelerator.gather(state).cpu() if accelerator.num_processes > 1 else state.cpu()


def save_checkpoint(run_dir: Path, model: TrainableModel, optimizers: dict, step: int, elapsed: float,
                    accelerator: Accelerator, keep: int) -> None:
    """Write checkpoints/step-N atomically: into a hidden temporary folder, then one rename, then latest.json."""
    rng = rng_states(accelerator)        # a collective: every process must call it
    if not accelerator.is_main_process:
        return
    root = run_dir / "checkpoints"
    tmp, final = root / f".tmp-step-{step:07d}", root / f"step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tensors: dict[str, Tensor] = {}
    state = pack({"optimizers": {k: o.state_dict() for k, o in optimizers.items()}, "rng": rng}, tensors, "s")
    safetensors.torch.save_file(tensors, str(tmp / "training_state.safetensors"))
    save_json({"step": step, "elapsed": elapsed, "num_processes": accelerator.num_processes, "state": state},
              tmp / "training_state.json")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    save_json({"step": step, "folder": final.name}, root / "latest.json")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(run_dir: Path) -> Path:
    """The folder latest.json names; failing that, the newest complete step-* folder."""
    root = run_dir / "checkpoints"
    try:
        folder = root / json.loads((root / "latest.json").read_text())["folder"]
        if (folder / "training_state.json").is_file():
            return folder
    except (OSError, ValueError, KeyError):
        pass
    complete = sorted(p for p in root.glob("step-*") if (p / "training_state.json").is_file())
    if not complete:
        raise FileNotFoundError(f"no checkpoint to resume from in {root}")
    return complete[-1]


def load_checkpoint(folder: Path, model: TrainableModel, optimizers: dict, accelerator: Accelerator) -> tuple[int, float]:
    safetensors.torch.load_model(model, str(folder / "model.safetensors"), device=str(accelerator.device))
    meta = json.loads((folder / "training_state.json").read_text())
    if meta["num_processes"] != accelerator.num_processes:
        raise ValueError(f"{folder} was written by {meta['num_processes']} processes; resume with as many "
                         f"(now {accelerator.num_processes}) to continue the same data order and RNG streams")
    state = unpack(meta["state"], safetensors.torch.load_file(str(folder / "training_state.safetensors")))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng"][accelerator.process_index])
    return meta["step"], meta["elapsed"]
