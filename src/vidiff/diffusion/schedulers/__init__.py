"""The public, diffusers-named schedulers: a typed config mapped onto vidiff's sampling functions."""

from .base import Scheduler, SchedulerStepOutput
from .euler_discrete import EulerDiscreteConfig, EulerDiscreteScheduler

__all__ = ["EulerDiscreteConfig", "EulerDiscreteScheduler", "Scheduler", "SchedulerStepOutput"]
