"""Noise schedulers written from scratch with the diffusers API: DDPM, DDIM and DPM-Solver++ (2M)."""
from core.schedulers.base import Scheduler, SchedulerOutput
from core.schedulers.ddim import DDIMScheduler
from core.schedulers.ddpm import DDPMScheduler
from core.schedulers.dpm_solver import DPMSolverMultistepScheduler

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}

__all__ = ["Scheduler", "SchedulerOutput", "DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "SCHEDULERS"]
