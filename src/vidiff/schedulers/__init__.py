"""The public, diffusers-named schedulers: a typed config (diffusers' ``scheduler_config.json``)
mapped onto :mod:`vidiff.diffusion`'s sampling math, answering one plan request each."""

from .base import Scheduler, SchedulerStepOutput
from .euler_discrete import EulerDiscreteConfig, EulerDiscreteScheduler
from .euler_ancestral_discrete import EulerAncestralDiscreteConfig, EulerAncestralDiscreteScheduler
from .dpmsolver_multistep import DPMSolverMultistepConfig, DPMSolverMultistepScheduler
from .ddim import DDIMConfig, DDIMScheduler
from .lcm import LCMConfig, LCMScheduler, LCMStepOutput
from .pndm import PNDMConfig, PNDMScheduler
from .flow_match_euler_discrete import FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler
from .unipc_multistep import UniPCMultistepConfig, UniPCMultistepScheduler

__all__ = ["EulerDiscreteConfig", "EulerDiscreteScheduler", "Scheduler", "SchedulerStepOutput"]
__all__ += ["DDIMConfig", "DDIMScheduler", "LCMConfig", "LCMScheduler", "LCMStepOutput"]
__all__ += ["EulerAncestralDiscreteConfig", "EulerAncestralDiscreteScheduler"]
__all__ += ["DPMSolverMultistepConfig", "DPMSolverMultistepScheduler", "PNDMConfig", "PNDMScheduler"]

# Every public scheduler, keyed by the class name model_index.json writes: what each pipeline accepts.
SCHEDULERS = {
    cls.__name__: cls
    for cls in (
        DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler,
        LCMScheduler, PNDMScheduler,
    )
}
AnyScheduler = (
    DDIMScheduler | EulerDiscreteScheduler | EulerAncestralDiscreteScheduler | DPMSolverMultistepScheduler
    | LCMScheduler | PNDMScheduler
)
__all__ += ["SCHEDULERS", "AnyScheduler"]
__all__ += ["FlowMatchEulerDiscreteConfig", "FlowMatchEulerDiscreteScheduler", "UniPCMultistepConfig", "UniPCMultistepScheduler"]

# The flow-matching schedulers (flow sample x = (1 − t)·x0 + t·ε), keyed by class name: what the
# flow-matching pipelines (Wan) accept. Kept apart from SCHEDULERS, whose VE/VP networks they cannot drive.
FLOW_SCHEDULERS = {cls.__name__: cls for cls in (UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)}
AnyFlowScheduler = UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler
__all__ += ["FLOW_SCHEDULERS", "AnyFlowScheduler"]
