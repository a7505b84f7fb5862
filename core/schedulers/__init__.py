"""Noise schedulers written from scratch with the diffusers API: DDPM, DDIM, DPM-Solver++ (2M, ODE or SDE) and UniPC
for diffusion models, multistep consistency sampling (LCM) for consistency-distilled ones, Euler and Heun for
flow-matching models, Euler, Heun and DPM-Solver++ for EDM models."""
from core.schedulers.base import Scheduler, SchedulerOutput
from core.schedulers.ddim import DDIMScheduler
from core.schedulers.ddpm import DDPMScheduler
from core.schedulers.dpm_solver import DPMSolverMultistepScheduler
from core.schedulers.edm import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, EDMHeunScheduler
from core.schedulers.lcm import LCMScheduler
from core.schedulers.flow_match import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from core.schedulers.unipc import UniPCMultistepScheduler

DIFFUSION_SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler,
                        "dpm_solver_sde": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
CONSISTENCY_SCHEDULERS = {"lcm": LCMScheduler}
FLOW_SCHEDULERS = {"euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler}
EDM_SCHEDULERS = {"edm_dpm_solver": EDMDPMSolverMultistepScheduler, "edm_heun": EDMHeunScheduler,
                  "edm_euler": EDMEulerScheduler}
SCHEDULERS = {**DIFFUSION_SCHEDULERS, **CONSISTENCY_SCHEDULERS, **FLOW_SCHEDULERS, **EDM_SCHEDULERS}
SCHEDULER_OPTIONS = {"dpm_solver_sde": {"algorithm_type": "sde-dpmsolver++"}}   # what a name sets beyond its class
SCHEDULER_LABELS = {"dpm_solver": "DPM-Solver++", "dpm_solver_sde": "DPM-Solver++ SDE", "unipc": "UniPC",
                    "ddim": "DDIM", "ddpm": "DDPM", "lcm": "LCM (consistency)", "euler": "Euler (flow matching)",
                    "heun": "Heun (flow matching)",
                    "edm_dpm_solver": "DPM-Solver++ (EDM)", "edm_heun": "Heun (EDM)",
                    "edm_euler": "Euler (EDM)"}                                 # for people: the apps, bench tables

__all__ = ["Scheduler", "SchedulerOutput", "DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
           "UniPCMultistepScheduler", "LCMScheduler", "FlowMatchEulerDiscreteScheduler",
           "FlowMatchHeunDiscreteScheduler",
           "EDMEulerScheduler", "EDMHeunScheduler", "EDMDPMSolverMultistepScheduler", "SCHEDULERS", "SCHEDULER_LABELS",
           "SCHEDULER_OPTIONS", "DIFFUSION_SCHEDULERS", "CONSISTENCY_SCHEDULERS", "FLOW_SCHEDULERS", "EDM_SCHEDULERS"]
