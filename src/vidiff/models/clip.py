"""vidiff's own CLIP encoders, with transformers' parameter names so published weights load.

The shared transformer encoder lives in :mod:`vidiff.models.clip_layers`; each tower has its own
module (:mod:`vidiff.models.clip_vision`, :mod:`vidiff.models.clip_text`). This module is the public
face of both.
"""

from .clip_layers import CLIP_ACTIVATIONS, CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPMLP
from .clip_text import (
    CLIPTextConfig,
    CLIPTextEmbeddings,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTextOutput,
    CLIPTextTransformer,
)
from .clip_vision import (
    CLIPVisionConfig,
    CLIPVisionEmbeddings,
    CLIPVisionModelWithProjection,
    CLIPVisionOutput,
    CLIPVisionTransformer,
)

__all__ = [
    "CLIP_ACTIVATIONS",
    "CLIPAttention",
    "CLIPEncoder",
    "CLIPEncoderLayer",
    "CLIPMLP",
    "CLIPTextConfig",
    "CLIPTextEmbeddings",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTextOutput",
    "CLIPTextTransformer",
    "CLIPVisionConfig",
    "CLIPVisionEmbeddings",
    "CLIPVisionModelWithProjection",
    "CLIPVisionOutput",
    "CLIPVisionTransformer",
]
