"""vidiff: text- and image-to-video diffusion in PyTorch, loading diffusers-layout checkpoints.

Public API::

    from vidiff import StableVideoDiffusionPipeline, load_image, export_to_video, export_to_gif
"""

__version__ = "0.1.0"

from .diffusion.schedulers import EulerDiscreteScheduler
from .image_processing import CLIPImageProcessor
from .media import export_to_gif, export_to_video, load_image, load_video
from .models.clip import CLIPVisionModelWithProjection
from .models.unet_svd import UNetSpatioTemporalConditionModel
from .models.vae_temporal import AutoencoderKLTemporalDecoder
from .pipelines.frames import VideoPipelineOutput
from .pipelines.svd import StableVideoDiffusionPipeline

__all__ = [
    "AutoencoderKLTemporalDecoder",
    "CLIPImageProcessor",
    "CLIPVisionModelWithProjection",
    "EulerDiscreteScheduler",
    "StableVideoDiffusionPipeline",
    "UNetSpatioTemporalConditionModel",
    "VideoPipelineOutput",
    "export_to_gif",
    "export_to_video",
    "load_image",
    "load_video",
]
