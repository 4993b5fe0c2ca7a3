"""The adapter flags of ``vidiff animatediff``: LoRA (``--lora ID_OR_FILE[:SCALE]``, repeatable) and
IP-Adapter (``--ip-adapter SOURCE``, ``--ip-adapter-image PATH``, ``--ip-adapter-scale X``).

As with the control flags, every combination that cannot work is refused from the flags alone (a
:class:`UsageError` naming the flag, exit status 2) before any model loads; the IP-Adapter image is
read before loading too. After the pipeline loads, :func:`apply` makes exactly the calls a Python
user would make::

    pipe.load_lora_weights(source, adapter_name=name, weight_name=…, subfolder=…)   # one per --lora
    pipe.set_adapters([names…], adapter_weights=[scales…])
    pipe.load_ip_adapter(repo_or_folder, subfolder=…, weight_name=…)
    pipe.set_ip_adapter_scale(scale)

and the pipeline call gets ``ip_adapter_image``. The sidecar records the flags under ``arguments``
(local paths made absolute) and what ran under ``resolved.adapters``: each LoRA's adapter name,
weight and where it was read from, and the IP-Adapter's source, scale and the image's SHA-256.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

from ..image_loading import load_image
from .commands import Command
from .errors import RunError, UsageError

# setting → flag, for every setting of this group (all AnimateDiff-only).
FLAGS = {"lora": "--lora", "ip_adapter": "--ip-adapter", "ip_adapter_image": "--ip-adapter-image",
         "ip_adapter_scale": "--ip-adapter-scale"}
# Suffixes of a weight file (a LoRA or IP-Adapter given as one file).
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
IP_ADAPTER_SCALE = 1.0  # set_ip_adapter_scale's trained strength, diffusers' default


# ------------------------------------------------------------------------------ value parsers
def lora_item(text: str) -> str:
    """``--lora ID_OR_FILE[:SCALE]``: the text after the last ``:`` is the scale only if it reads as
    a finite number (so a Hub id, or a path holding a ``:``, stays whole)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected ID_OR_FILE[:SCALE], got an empty value")
    source, scale = split_lora(text)
    if not source.strip():
        raise argparse.ArgumentTypeError(f"expected ID_OR_FILE[:SCALE] (a Hub id, folder or file first), got {text!r}")
    return text if scale is None else f"{source}:{scale!r}"


def split_lora(text: str) -> tuple[str, float | None]:
    """``"style.safetensors:0.7"`` → ``("style.safetensors", 0.7)``; no number after the last ``:`` → (text, None)."""
    head, sep, tail = text.rpartition(":")
    if not sep:
        return text, None
    try:
        scale = float(tail)
    except ValueError:
        return text, None
    if not math.isfinite(scale):
        raise argparse.ArgumentTypeError(f"expected a finite LoRA scale after the last ':', got {tail!r} in {text!r}")
    return head, scale


def ip_adapter_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number (the image prompt's weight), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number (the image prompt's weight), got {text}")
    return value


# ------------------------------------------------------------------------------ flags
def add_adapter_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    """The "LoRA and IP-Adapter" group. Other commands accept the flags hidden, so that using one
    there is a clear error rather than "unrecognized arguments"."""
    group = sub.add_argument_group("LoRA and IP-Adapter (AnimateDiff)")
    shown = command.name == "animatediff"

    def add(*names: str, help: str, **kwargs: Any) -> None:
        group.add_argument(*names, help=help if shown else argparse.SUPPRESS, **kwargs)

    add("--lora", action="append", type=lora_item, metavar="ID_OR_FILE[:SCALE]", help=(
        "a LoRA (diffusers/PEFT, kohya/A1111 or AnimateDiff motion LoRA): a Hub id, a Hub file owner/repo/file.safetensors, "
        "a folder or a file, with an optional weight after the last ':' (default 1.0); repeat for several"))
    add("--ip-adapter", metavar="SOURCE", help=(
        "an SD 1.5 IP-Adapter (ip-adapter_sd15, -plus): a Hub file owner/repo/sub/folder/file.safetensors or a local file; "
        "its CLIP image encoder is read from image_encoder/ next to it"))
    add("--ip-adapter-image", metavar="PATH_OR_URL", help="with --ip-adapter: the image prompt")
    add("--ip-adapter-scale", type=ip_adapter_scale, metavar="X",
        help=f"with --ip-adapter: the image prompt's weight; 0 turns it off (default: {IP_ADAPTER_SCALE})")


def defaults(command: Command) -> dict[str, Any]:
    """The settings of a run without these flags (recorded in sidecars); none for other commands."""
    if command.name != "animatediff":
        return {}
    return {"lora": [], "ip_adapter": None, "ip_adapter_image": None, "ip_adapter_scale": None}


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class Source:
    """Where a weight file comes from: a local file, a local folder, or a Hub repository (with the
    file's subfolder and name when the text names one)."""

    text: str  # as given
    location: str  # a local path, or the Hub repository id
    subfolder: str | None = None
    weight_name: str | None = None
    local: bool = False


@dataclasses.dataclass(frozen=True)
class Lora:
    source: Source
    name: str  # the adapter name (unique in the run)
    weight: float


@dataclasses.dataclass(frozen=True)
class AdapterPlan:
    """What the flags ask for, checked; ``image`` is the IP-Adapter image, read."""

    loras: tuple[Lora, ...] = ()
    ip_adapter: Source | None = None
    ip_adapter_scale: float = IP_ADAPTER_SCALE
    image: Any = None
    image_text: str | None = None

    def call_arguments(self, call: dict[str, Any]) -> dict[str, Any]:
        return {**call, "ip_adapter_image": self.image} if self.ip_adapter else call


def source_of(text: str, flag: str, hub_file_parts: int) -> Source:
    """A local file or folder as it is; else a Hub id ``owner/repo``, or ``owner/repo/[sub/folders/]file``
    split into repository, subfolder and weight name. ``hub_file_parts``: the fewest parts a Hub file
    reference has (3 for LoRA, where ``owner/repo`` alone is a repository)."""
    path = Path(text).expanduser()
    if path.exists():
        if not (path.is_file() or path.is_dir()):
            raise UsageError(f"{flag} {text!r} is not a regular file or folder")
        return Source(text, str(path), local=True)
    parts = text.split("/")
    if text.endswith(WEIGHT_SUFFIXES) and (len(parts) < hub_file_parts or text.startswith((".", "/", "~"))):
        raise UsageError(f"{flag} {text!r} does not exist")
    if any(not part for part in parts) or len(parts) < 2:
        raise UsageError(f"{flag} {text!r} is neither a local file or folder nor a Hub id like owner/repo")
    if len(parts) == 2:
        return Source(text, text)
    if not parts[-1].endswith(WEIGHT_SUFFIXES):
        raise UsageError(f"{flag} {text!r}: a Hub path must end in a weight file ({', '.join(WEIGHT_SUFFIXES)})")
    return Source(text, "/".join(parts[:2]), "/".join(parts[2:-1]) or None, parts[-1])


def check_flags(command: Command, settings: dict[str, Any]) -> AdapterPlan:
    """The group's settings checked from the flags alone, and the IP-Adapter image read."""
    if command.name != "animatediff":
        for key, flag in FLAGS.items():
            if settings.get(key) not in (None, []):
                raise UsageError(f"{flag} does not apply to `vidiff {command.name}`: LoRA and IP-Adapter are AnimateDiff's "
                                 "(`vidiff animatediff`)")
        return AdapterPlan()
    loras = _loras(settings.get("lora") or [])
    ip = settings.get("ip_adapter")
    if not ip:
        for key in ("ip_adapter_image", "ip_adapter_scale"):
            if settings.get(key) is not None:
                raise UsageError(f"{FLAGS[key]} needs --ip-adapter")
        return AdapterPlan(loras)
    source = source_of(ip, "--ip-adapter", 3)
    if (source.local and not Path(source.location).is_file()) or (not source.local and source.weight_name is None):
        raise UsageError(f"--ip-adapter {ip!r}: name the weight file, e.g. h94/IP-Adapter/models/ip-adapter_sd15.safetensors "
                         "or a local .safetensors file")
    image_text = settings.get("ip_adapter_image")
    if not image_text:
        raise UsageError("--ip-adapter needs --ip-adapter-image PATH (the image prompt)")
    scale = settings.get("ip_adapter_scale")
    return AdapterPlan(loras, source, IP_ADAPTER_SCALE if scale is None else scale, _read_image(image_text), image_text)


def _loras(items: list[str]) -> tuple[Lora, ...]:
    """Each ``--lora`` with its source, a unique adapter name (the file's stem or the repository's
    name; ``_2``, ``_3``… on repeats) and its weight."""
    loras, names = [], set()
    for item in items:
        text, scale = split_lora(lora_item(item))
        source = source_of(text, "--lora", 3)
        stem = Path(source.weight_name or source.location.rstrip("/")).name
        base = stem.removesuffix(next((s for s in WEIGHT_SUFFIXES if stem.endswith(s)), "")) or "lora"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.add(name)
        loras.append(Lora(source, name, 1.0 if scale is None else scale))
    return tuple(loras)


def _read_image(text: str) -> Any:
    try:
        return load_image(text)
    except FileNotFoundError:
        raise UsageError(f"--ip-adapter-image {text!r} does not exist") from None
    except (ValueError, TypeError) as error:
        raise UsageError(f"--ip-adapter-image {text!r} cannot be read as an image: {error}") from None
    except OSError as error:  # a URL that could not be fetched
        raise RunError(f"--ip-adapter-image {text!r} could not be fetched: {error}") from None


# ------------------------------------------------------------------------------ loading and the record
def apply(pipe: Any, plan: AdapterPlan, offline: bool | None) -> dict[str, Any]:
    """Load the LoRAs and the IP-Adapter into ``pipe`` (before offload or compile); returns what the
    sidecar's ``resolved.adapters`` records ({} when no flag of the group is given)."""
    record: dict[str, Any] = {}
    for lora in plan.loras:
        where = dict(weight_name=lora.source.weight_name, subfolder=lora.source.subfolder)
        try:
            pipe.load_lora_weights(lora.source.location, adapter_name=lora.name, local_files_only=offline, **where)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise RunError(f"cannot load --lora {lora.source.text!r}: {error}") from error
    if plan.loras:
        pipe.set_adapters([lora.name for lora in plan.loras], adapter_weights=[lora.weight for lora in plan.loras])
        record["lora"] = [dict(source=lora.source.text, adapter_name=lora.name, weight=lora.weight,
                               **_where(lora.source), **file_stamp(lora.source)) for lora in plan.loras]
    if plan.ip_adapter is not None:
        source = plan.ip_adapter
        folder, subfolder, weight_name = ((str(Path(source.location).parent), None, Path(source.location).name) if source.local
                                          else (source.location, source.subfolder, source.weight_name))
        try:
            pipe.load_ip_adapter(folder, subfolder=subfolder, weight_name=weight_name, local_files_only=offline)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise RunError(f"cannot load --ip-adapter {source.text!r}: {error}") from error
        pipe.set_ip_adapter_scale(plan.ip_adapter_scale)
        record["ip_adapter"] = dict(source=source.text, **_where(source), scale=plan.ip_adapter_scale,
                                    image=plan.image_text, image_sha256=_sha256(plan.image_text), **file_stamp(source))
    return record


def _where(source: Source) -> dict[str, Any]:
    if source.local:
        return {"path": str(Path(source.location).resolve())}
    return {"repo_id": source.location, "subfolder": source.subfolder, "weight_name": source.weight_name}


def file_stamp(source: Source | str) -> dict[str, Any]:
    """A local file's size and modification time (nanoseconds): a cheap fingerprint. Weight files
    reach gigabytes, so they are not hashed; a replay that finds another size or time was given
    another file. {} for folders and Hub sources."""
    path = Path(source.location if isinstance(source, Source) else source).expanduser()
    if not path.is_file():
        return {}
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sha256(location: str | None) -> str | None:
    path = Path(location).expanduser() if location else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def record_arguments(arguments: dict[str, Any]) -> None:
    """Make the local paths of the group's ``arguments`` absolute (so a sidecar replays from any folder)."""
    def absolute(text: Any) -> Any:
        path = Path(text).expanduser() if isinstance(text, str) and text else None
        return str(path.resolve()) if path is not None and path.exists() else text

    for key in ("ip_adapter", "ip_adapter_image"):
        if key in arguments:
            arguments[key] = absolute(arguments[key])
    if isinstance(arguments.get("lora"), list):
        items = []
        for item in arguments["lora"]:
            text, scale = split_lora(item)
            items.append(absolute(text) + ("" if scale is None else f":{scale!r}"))
        arguments["lora"] = items
