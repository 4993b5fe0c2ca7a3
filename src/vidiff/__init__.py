"""vidiff: text- and image-to-video diffusion in PyTorch, loading diffusers-layout checkpoints.

Public API::

    from vidiff import StableVideoDiffusionPipeline, I2VGenXLPipeline, AnimateDiffPipeline, MotionAdapter, DDIMScheduler
    from vidiff import AnimateDiffVideoToVideoPipeline, AnimateDiffControlNetPipeline, ControlNetModel
    from vidiff import WanPipeline, WanImageToVideoPipeline, UniPCMultistepScheduler
    from vidiff import load_image, export_to_video, export_to_gif
"""

__version__ = "0.1.0"

from .schedulers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from .image_processing import CLIPImageProcessor
from .control_frames import canny_frames
from .media import export_to_gif, export_to_video, load_image, load_video
from .models.clip import CLIPTextModel, CLIPVisionModelWithProjection
from .models.controlnet import ControlNetModel, MultiControlNetModel
from .models.controlnet_sparsectrl import SparseControlNetModel
from .models.motion_adapter import MotionAdapter
from .models.unet_i2vgen_xl import I2VGenXLUNet
from .models.unet_2d import UNet2DConditionModel
from .models.umt5 import UMT5EncoderModel
from .models.unet_motion import UNetMotionModel
from .models.unet_svd import UNetSpatioTemporalConditionModel
from .models.vae_kl import AutoencoderKL
from .models.vae_temporal import AutoencoderKLTemporalDecoder
from .models.wan_vae import AutoencoderKLWan
from .models.wan_transformer import WanTransformer3DModel
from .pipelines.animatediff import AnimateDiffPipeline
from .pipelines.animatediff_controlnet import AnimateDiffControlNetPipeline, AnimateDiffVideoToVideoControlNetPipeline
from .pipelines.animatediff_sparsectrl import AnimateDiffSparseControlNetPipeline
from .pipelines.animatediff_video2video import AnimateDiffVideoToVideoPipeline
from .pipelines.frames import VideoPipelineOutput
from .pipelines.i2vgen_xl import I2VGenXLPipeline
from .pipelines.svd import StableVideoDiffusionPipeline
from .pipelines.wan import WanPipeline
from .pipelines.wan_i2v import WanImageToVideoPipeline
from .tokenizer import CLIPTokenizer, T5TokenizerFast

__all__ = [
    "AnimateDiffControlNetPipeline",
    "AnimateDiffPipeline",
    "AnimateDiffSparseControlNetPipeline",
    "AnimateDiffVideoToVideoControlNetPipeline",
    "AnimateDiffVideoToVideoPipeline",
    "AutoencoderKL",
    "AutoencoderKLTemporalDecoder",
    "AutoencoderKLWan",
    "CLIPImageProcessor",
    "CLIPTextModel",
    "CLIPTokenizer",
    "CLIPVisionModelWithProjection",
    "ControlNetModel",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "I2VGenXLPipeline",
    "I2VGenXLUNet",
    "LCMScheduler",
    "MotionAdapter",
    "MultiControlNetModel",
    "PNDMScheduler",
    "SparseControlNetModel",
    "StableVideoDiffusionPipeline",
    "T5TokenizerFast",
    "UNet2DConditionModel",
    "UMT5EncoderModel",
    "UNetMotionModel",
    "UNetSpatioTemporalConditionModel",
    "UniPCMultistepScheduler",
    "VideoPipelineOutput",
    "WanImageToVideoPipeline",
    "WanPipeline",
    "WanTransformer3DModel",
    "canny_frames",
    "export_to_gif",
    "export_to_video",
    "load_image",
    "load_video",
]
