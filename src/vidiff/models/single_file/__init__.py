"""Original (non-diffusers) single-file checkpoints: read one file, rename its keys, build the model.

The released AnimateDiff motion modules (``mm_sd_v15_v2.ckpt``), ControlNets
(``control_v11p_sd15_canny.pth``) and Stable Diffusion checkpoints store their tensors under the
names of the code that trained them. Each format here is DATA: an ordered table of
``(regex, replacement)`` rename rules (:mod:`.rules`), the few tensor reshapes as named transforms,
and the keys that tell the format apart. The converted state dict then goes through the same strict
load as a diffusers folder (:func:`vidiff.strict_loading.load_state_dict_strict`), so a key that no
rule knows, or a tensor that is missing, is an error that names it.

Pickles (``.ckpt``/``.pt``/``.pth``/``.bin``) are read only through ``torch.load(weights_only=True)``.

Formats: :mod:`.motion_modules` (AnimateDiff v1/v2/v3), :mod:`.controlnet` (ControlNet v1.0/v1.1),
:mod:`.stable_diffusion` (SD 1.x: :mod:`.ldm_unet`, :mod:`.ldm_vae`, the CLIP text tower;
``original_config`` YAMLs in :mod:`.ldm_yaml`), :mod:`.svd` (SVD / SVD-XT). The model classes and
pipelines call them from their ``from_single_file``; :mod:`vidiff.models.single_file_components`
builds a pipeline file's networks.
"""

from .reading import describe_layout, read_single_file
from .rules import Rule, RenameTable, convert_state_dict

__all__ = ["Rule", "RenameTable", "convert_state_dict", "describe_layout", "read_single_file"]
