"""IP-Adapter (ip-adapter_sd15 and -plus) on the AnimateDiff pipelines against diffusers 0.42.1.

Both libraries load the same tiny random adapter files, written in the original h94/IP-Adapter
layout (tests/ip_adapter_checkpoint.py), next to a tiny CLIP vision tower; frames are compared as
``np`` output within 1e-4 with the same seeded generator, with classifier-free guidance.
"""

from __future__ import annotations

import inspect
import os
import pickle

import numpy as np
import PIL.Image
import pytest
import torch

from tests.animatediff_checkpoint import GUIDE_DDIM, SMALL_CALL, diffusers_pipeline
from tests.helpers import max_abs_diff
from tests.ip_adapter_checkpoint import BASE_FILE, PLUS_FILE, write_tiny_ip_adapter

TOLERANCE = 1e-4
CALL = dict(SMALL_CALL, prompt="a rocket flying into space", negative_prompt="blurry")
FILES = {"base": BASE_FILE, "plus": PLUS_FILE}


def _face() -> PIL.Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # not square: resize + crop
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def ip_setup(tiny_animatediff, tmp_path_factory):
    """(adapter root, diffusers oracle, vidiff pipeline): private pipelines, since loading an adapter
    changes them (the session fixtures must stay plain)."""
    from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    root = tiny_animatediff[0]
    oracle = diffusers_pipeline(root)
    ip_root = write_tiny_ip_adapter(tmp_path_factory.mktemp("tiny-ip-adapter"), oracle.unet)
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"))
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return ip_root, oracle, pipe


def _load_both(ip_setup, kind: str, scale: float) -> None:
    ip_root, oracle, pipe = ip_setup
    for p in (oracle, pipe):
        p.unload_ip_adapter() if getattr(p.unet, "encoder_hid_proj", None) is not None else None
        p.load_ip_adapter(ip_root, subfolder="models", weight_name=FILES[kind])
        p.set_ip_adapter_scale(scale)


def _frames(pipe, **overrides) -> np.ndarray:
    return pipe(**{**CALL, **overrides}, generator=torch.Generator().manual_seed(7)).frames


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("scale", [0.0, 0.6])
def test_image_prompt_matches_diffusers(ip_setup, kind, scale):
    _load_both(ip_setup, kind, scale)
    _, oracle, pipe = ip_setup
    ours, theirs = _frames(pipe, ip_adapter_image=_face()), _frames(oracle, ip_adapter_image=_face())
    assert ours.shape == theirs.shape
    assert max_abs_diff(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize("kind", FILES)
def test_precomputed_embeds_match_diffusers(ip_setup, kind):
    """diffusers' own ``prepare_ip_adapter_image_embeds`` output ([negative; positive] rows) fed to both."""
    _load_both(ip_setup, kind, 0.8)
    _, oracle, pipe = ip_setup
    embeds = oracle.prepare_ip_adapter_image_embeds(_face(), None, torch.device("cpu"), 1, True)
    ours, theirs = _frames(pipe, ip_adapter_image_embeds=embeds), _frames(oracle, ip_adapter_image_embeds=embeds)
    assert max_abs_diff(ours, theirs) <= TOLERANCE
    # the same embeds computed by vidiff from the image give the same video
    assert max_abs_diff(ours, _frames(pipe, ip_adapter_image=_face())) <= TOLERANCE


def test_without_guidance_matches_diffusers(ip_setup):
    _load_both(ip_setup, "plus", 1.0)
    _, oracle, pipe = ip_setup
    ours = _frames(pipe, ip_adapter_image=_face(), guidance_scale=1.0)
    theirs = _frames(oracle, ip_adapter_image=_face(), guidance_scale=1.0)
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_scale_weighs_the_image_and_unload_restores_plain_output(ip_setup):
    ip_root, _, pipe = ip_setup
    if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
        pipe.unload_ip_adapter()
    plain = _frames(pipe)
    pipe.load_ip_adapter(ip_root, subfolder="models", weight_name=BASE_FILE)
    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(_frames(pipe, ip_adapter_image=_face()), plain)  # scale 0 skips the branch exactly
    pipe.set_ip_adapter_scale(0.6)
    assert max_abs_diff(_frames(pipe, ip_adapter_image=_face()), plain) > 1e-2  # the image steers the video
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None and pipe.feature_extractor is None
    assert not any(".to_k_ip." in key or "encoder_hid_proj" in key for key in pipe.unet.state_dict())
    assert np.array_equal(_frames(pipe), plain)


def test_call_errors_name_the_argument(ip_setup):
    ip_root, _, pipe = ip_setup
    if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
        pipe.unload_ip_adapter()
    with pytest.raises(ValueError, match="load_ip_adapter"):
        _frames(pipe, ip_adapter_image=_face())
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        pipe.set_ip_adapter_scale(0.5)
    pipe.load_ip_adapter(ip_root, subfolder="models", weight_name=BASE_FILE)
    try:
        with pytest.raises(ValueError, match="ip_adapter_image"):
            _frames(pipe)  # an adapter loaded but no image: as diffusers, refused
        with pytest.raises(ValueError, match="not both"):
            _frames(pipe, ip_adapter_image=_face(), ip_adapter_image_embeds=[torch.zeros(2, 1, 24)])
        with pytest.raises(ValueError, match="ip_adapter_image_embeds"):
            _frames(pipe, ip_adapter_image_embeds=[torch.zeros(24)])
        with pytest.raises(TypeError, match="scale"):
            pipe.set_ip_adapter_scale({"down": 1.0})
    finally:
        pipe.unload_ip_adapter()


def _state_dict_of(path):
    from safetensors.torch import load_file

    flat = load_file(path)
    return {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}


def test_bin_file_loads_the_same_weights(ip_setup, tmp_path):
    ip_root, _, pipe = ip_setup
    models = tmp_path / "models"
    models.mkdir()
    torch.save(_state_dict_of(ip_root / "models" / PLUS_FILE), models / "ip-adapter-plus_sd15.bin")
    weights = {}
    for root, name in ((ip_root, PLUS_FILE), (tmp_path, "ip-adapter-plus_sd15.bin")):
        pipe.unload_ip_adapter()
        pipe.load_ip_adapter(root, subfolder="models", weight_name=name, image_encoder_folder=None)
        weights[name] = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "_ip." in k or "encoder_hid_proj" in k}
    pipe.unload_ip_adapter()
    assert len(weights[PLUS_FILE]) > 0 and weights[PLUS_FILE].keys() == weights["ip-adapter-plus_sd15.bin"].keys()
    assert all(torch.equal(v, weights["ip-adapter-plus_sd15.bin"][k]) for k, v in weights[PLUS_FILE].items())


class _Planted:
    """Unpickling this would create a folder: the proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_is_not_executed(ip_setup, tmp_path):
    _, _, pipe = ip_setup
    marker = tmp_path / "pwned"
    (tmp_path / "models").mkdir()
    with open(tmp_path / "models" / "evil.bin", "wb") as handle:
        pickle.dump({"image_proj": _Planted(str(marker)), "ip_adapter": {}}, handle)
    with pytest.raises(ValueError, match="Refusing to load"):
        pipe.load_ip_adapter(tmp_path, subfolder="models", weight_name="evil.bin", image_encoder_folder=None)
    assert not marker.exists()
    assert getattr(pipe.unet, "encoder_hid_proj", None) is None


def test_bad_files_are_errors_naming_the_key(ip_setup):
    ip_root, _, pipe = ip_setup
    good = _state_dict_of(ip_root / "models" / BASE_FILE)
    extra = {"image_proj": good["image_proj"], "ip_adapter": {**good["ip_adapter"], "99.to_k_ip.weight": torch.zeros(1)}}
    with pytest.raises(ValueError, match="99.to_k_ip.weight"):
        pipe.load_ip_adapter(extra, subfolder=None, weight_name="x")
    missing = {"image_proj": good["image_proj"], "ip_adapter": {k: v for k, v in good["ip_adapter"].items() if not k.startswith("3.")}}
    with pytest.raises(ValueError, match="3.to_k_ip.weight"):
        pipe.load_ip_adapter(missing, subfolder=None, weight_name="x")
    unknown = {"image_proj": {"proj.3.weight": torch.zeros(4, 4)}, "ip_adapter": good["ip_adapter"]}
    with pytest.raises(ValueError, match="ip-adapter_sd15"):
        pipe.load_ip_adapter(unknown, subfolder=None, weight_name="x")
    with pytest.raises(ValueError, match="image_proj"):
        pipe.load_ip_adapter({"ip_adapter": good["ip_adapter"]}, subfolder=None, weight_name="x")
    assert getattr(pipe.unet, "encoder_hid_proj", None) is None  # nothing half-installed


@pytest.mark.parametrize(
    "name",
    ["AnimateDiffPipeline", "AnimateDiffVideoToVideoPipeline", "AnimateDiffControlNetPipeline",
     "AnimateDiffVideoToVideoControlNetPipeline", "AnimateDiffSparseControlNetPipeline"],
)
def test_call_arguments_sit_where_diffusers_has_them(name):
    import diffusers

    import vidiff

    def neighbours(cls):
        names = list(inspect.signature(cls.__call__).parameters)
        at = names.index("ip_adapter_image")
        return names[at - 1 : at + 2]

    assert neighbours(getattr(vidiff, name)) == neighbours(getattr(diffusers, name))


def test_video_to_video_with_image_prompt_matches_diffusers(ip_setup):
    import diffusers

    import vidiff

    _load_both(ip_setup, "base", 0.7)
    _, oracle, pipe = ip_setup
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    theirs_pipe = diffusers.AnimateDiffVideoToVideoPipeline(
        **{k: getattr(oracle, k) for k in parts}, motion_adapter=oracle.motion_adapter,
        image_encoder=oracle.image_encoder, feature_extractor=oracle.feature_extractor,
    )
    theirs_pipe.set_progress_bar_config(disable=True)
    ours_pipe = vidiff.AnimateDiffVideoToVideoPipeline(**{k: getattr(pipe, k) for k in parts})
    ours_pipe.image_encoder, ours_pipe.feature_extractor = pipe.image_encoder, pipe.feature_extractor
    ours_pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(3)
    video = [PIL.Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(4)]
    call = {k: v for k, v in CALL.items() if k != "num_frames"}
    ours = ours_pipe(video=video, **call, ip_adapter_image=_face(), generator=torch.Generator().manual_seed(7)).frames
    theirs = theirs_pipe(video=video, **call, ip_adapter_image=_face(), generator=torch.Generator().manual_seed(7)).frames
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_controlnet_with_image_prompt_matches_diffusers(ip_setup):
    """The ControlNet sees the text only; the image tokens go to the UNet (as in diffusers)."""
    import diffusers

    import vidiff
    from tests.control_checkpoint import load_controlnets, random_video

    _load_both(ip_setup, "plus", 0.7)
    _, oracle, pipe = ip_setup
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    theirs_pipe = diffusers.AnimateDiffControlNetPipeline(
        **{k: getattr(oracle, k) for k in parts}, motion_adapter=oracle.motion_adapter,
        controlnet=load_controlnets("diffusers", "controlnet_a"),
        image_encoder=oracle.image_encoder, feature_extractor=oracle.feature_extractor,
    )
    ours_pipe = vidiff.AnimateDiffControlNetPipeline(
        **{k: getattr(pipe, k) for k in parts}, controlnet=load_controlnets("vidiff", "controlnet_a")
    )
    ours_pipe.image_encoder, ours_pipe.feature_extractor = pipe.image_encoder, pipe.feature_extractor
    for p in (theirs_pipe, ours_pipe):
        p.set_progress_bar_config(disable=True)
    control = random_video(CALL["num_frames"], seed=5)
    ours = _frames(ours_pipe, conditioning_frames=control, ip_adapter_image=_face())
    theirs = _frames(theirs_pipe, conditioning_frames=control, ip_adapter_image=_face())
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_two_adapters_and_two_images_match_diffusers(ip_setup):
    """base + plus at once with their own scales; the plus adapter gets two reference images."""
    ip_root, oracle, pipe = ip_setup
    second = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 36, 3), dtype=np.uint8))
    images = [_face(), [_face(), second]]
    for p in (oracle, pipe):
        p.unload_ip_adapter() if getattr(p.unet, "encoder_hid_proj", None) is not None else None
        p.load_ip_adapter(ip_root, subfolder="models", weight_name=[BASE_FILE, PLUS_FILE])
        p.set_ip_adapter_scale([0.5, 0.8])
    ours, theirs = _frames(pipe, ip_adapter_image=images), _frames(oracle, ip_adapter_image=images)
    assert max_abs_diff(ours, theirs) <= TOLERANCE
    with pytest.raises(ValueError, match="one image"):
        _frames(pipe, ip_adapter_image=_face())  # two adapters loaded, one image given


def test_prompt_travel_gives_every_frame_the_image_tokens(ip_setup):
    """A one-key prompt schedule (text states per frame) is the plain prompt: with an image prompt too,
    so the per-frame context carries the video's image tokens on each of its frames."""
    _load_both(ip_setup, "plus", 0.7)
    _, _, pipe = ip_setup
    per_video = _frames(pipe, ip_adapter_image=_face())
    per_frame = _frames(pipe, prompt={0: CALL["prompt"]}, ip_adapter_image=_face())
    assert max_abs_diff(per_frame, per_video) <= 1e-5


@pytest.mark.parametrize("dim", [0, 1])
def test_forward_chunking_keeps_the_image_branch(ip_setup, dim):
    """Attention run on slices of rows (dim 0) or queries (dim 1) gives the unsliced video."""
    _load_both(ip_setup, "base", 0.6)
    _, _, pipe = ip_setup
    whole = _frames(pipe, ip_adapter_image=_face())
    pipe.enable_forward_chunking(chunk_size=3, dim=dim)
    try:
        sliced = _frames(pipe, ip_adapter_image=_face())
    finally:
        pipe.disable_forward_chunking()
    assert max_abs_diff(sliced, whole) <= 1e-5
