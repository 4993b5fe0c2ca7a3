"""The public, diffusers-named schedulers: a typed config mapped onto vidiff's sampling functions."""

from .base import Scheduler, SchedulerStepOutput
from .euler_discrete import EulerDiscreteConfig, EulerDiscreteScheduler
from .euler_ancestral_discrete import EulerAncestralDiscreteConfig, EulerAncestralDiscreteScheduler
from .dpmsolver_multistep import DPMSolverMultistepConfig, DPMSolverMultistepScheduler
from .ddim import DDIMConfig, DDIMScheduler
from .lcm import LCMConfig, LCMScheduler, LCMStepOutput

__all__ = ["EulerDiscreteConfig", "EulerDiscreteScheduler", "Scheduler", "SchedulerStepOutput"]
__all__ += ["DDIMConfig", "DDIMScheduler", "LCMConfig", "LCMScheduler", "LCMStepOutput"]
__all__ += ["EulerAncestralDiscreteConfig", "EulerAncestralDiscreteScheduler"]
__all__ += ["DPMSolverMultistepConfig", "DPMSolverMultistepScheduler"]
