"""Weight files of one component in the diffusers layout: their names, which to read, how to write.

Names (``W`` is the weights stem, "diffusion_pytorch_model" for diffusers models, "model" for
transformers ones; ``v`` a variant such as "fp16"):

- single file:  ``W.safetensors``                 variant ``W.v.safetensors``
- sharded:      ``W.safetensors.index.json``      variant ``W.safetensors.index.v.json``; the index's
  ``weight_map`` names the shards (``W-00001-of-00002.safetensors``, variant
  ``W.v-00001-of-00002.safetensors``; older transformers wrote ``W-00001-of-00002.v.safetensors``),
  so shards are always found through the index, never by guessing names.
- pickles (``P.bin``, variant ``P.v.bin``; sharded via ``P.bin.index.json``, variant
  ``P.bin.index.v.json``; ``P.pt``, ``P.ckpt``) are read only when the chosen variant has no
  safetensors, and only through ``torch.load(weights_only=True)``. ``P`` is the pickle stem: the same
  as ``W`` for diffusers, but transformers names its pickles ``pytorch_model`` beside ``model.safetensors``
  (see :data:`PICKLE_STEMS`).

This module touches the file system only through the paths it is given; finding files in a folder or a
Hub repo is :mod:`vidiff.loading`'s job.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt")
# Safetensors stem → pickle stem where a library used two: transformers writes model.safetensors but
# pytorch_model.bin (and pytorch_model.bin.index.json); diffusers uses diffusion_pytorch_model for both.
PICKLE_STEMS = {"model": "pytorch_model"}


def check_variant(variant: str | None) -> None:
    """Reject variants that cannot be part of a file name (``None`` means the default weights)."""
    if variant is None:
        return
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str such as 'fp16' or None, got {type(variant).__name__}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", variant):
        raise ValueError(f"variant must be letters, digits or '_' (e.g. 'fp16'), got {variant!r}")


def _with_variant(stem: str, variant: str | None) -> str:
    return stem if variant is None else f"{stem}.{variant}"


def pickle_stem(weights_name: str) -> str:
    """The stem of the pickled weights that go with safetensors stem ``weights_name``."""
    return PICKLE_STEMS.get(weights_name, weights_name)


def candidates(weights_name: str, variant: str | None) -> list[str]:
    """File names that hold one variant's weights, most preferred first (safetensors before pickles)."""
    tail = "" if variant is None else f".{variant}"
    named = _with_variant(weights_name, variant)
    pickled_stem = pickle_stem(weights_name)
    pickled = _with_variant(pickled_stem, variant)
    return [
        f"{named}.safetensors",
        f"{weights_name}.safetensors.index{tail}.json",
        f"{pickled}.bin",
        f"{pickled_stem}.bin.index{tail}.json",
        f"{pickled}.pt",
        f"{pickled}.ckpt",
    ]


def variants_present(names: Iterable[str], weights_name: str) -> list[str]:
    """Variants whose single-file or index weights appear in ``names`` (sorted)."""
    safe, pickled = re.escape(weights_name), re.escape(pickle_stem(weights_name))
    patterns = [
        re.compile(rf"{safe}\.([A-Za-z0-9_]+)\.safetensors"),
        re.compile(rf"{safe}\.safetensors\.index\.([A-Za-z0-9_]+)\.json"),
        re.compile(rf"{pickled}\.([A-Za-z0-9_]+)\.(?:bin|pt|ckpt)"),
        re.compile(rf"{pickled}\.bin\.index\.([A-Za-z0-9_]+)\.json"),
    ]
    return sorted({m.group(1) for n in names for m in (p.fullmatch(n) for p in patterns) if m})


def choose(names: Iterable[str], weights_name: str, variant: str | None, where: str, warn: bool = True) -> str:
    """Pick the file (single weights file or shard index) to read among the file names of a folder.

    ``where`` describes the folder for messages. A requested variant that this component lacks falls
    back to the default weights with a warning (pipelines ship fp16 files for some components only;
    ``warn=False`` for a second look at the same folder).
    """
    available = set(names)
    wanted = next((n for n in candidates(weights_name, variant) if n in available), None)
    if wanted is not None:
        return wanted
    default = next((n for n in candidates(weights_name, None) if n in available), None)
    if variant is not None and default is not None:
        if not warn:
            return default
        logger.warning(
            "%s has no %r variant of its weights (%s); loading %s instead.",
            where, variant, _with_variant(weights_name, variant) + ".safetensors", default,
        )
        return default
    others = variants_present(available, weights_name)
    listing = ", ".join(sorted(available)) or "no files"
    if others:
        raise FileNotFoundError(
            f"{where} has no {'default' if variant is None else repr(variant)} weights "
            f"({candidates(weights_name, variant)[0]}), only variant weights; found: {listing}. "
            f"Pass variant={others[0]!r} (variants present: {', '.join(others)})."
        )
    raise FileNotFoundError(
        f"{where} has no weights: expected {weights_name}.safetensors or a sharded "
        f"{weights_name}.safetensors.index.json (with a variant: {weights_name}.<variant>.safetensors), "
        f"or pickles {pickle_stem(weights_name)}.bin / {pickle_stem(weights_name)}.bin.index.json; found: {listing}."
    )


def is_index(file_name: str) -> bool:
    return file_name.endswith(".json")


def shard_names(index: Mapping[str, Any], index_name: str) -> dict[str, str]:
    """The ``weight_map`` (tensor key -> shard file name) of a shard index, validated."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ValueError(f"{index_name} has no valid 'weight_map' (a mapping of tensor names to shard files)")
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise ValueError(f"{index_name} names a shard outside its folder: {shard!r}")
    return weight_map


def read(path: Path) -> dict[str, torch.Tensor]:
    """Read one weights file onto the CPU: safetensors, or a pickle through ``weights_only`` loading."""
    return {key: value.load() if isinstance(value, StoredTensor) else value for key, value in read_lazily(path).items()}


# safetensors' dtype names (the file header's "dtype") → torch dtypes.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class StoredTensor:
    """One tensor of a safetensors file, read only by :meth:`load`.

    Its ``shape`` and ``dtype`` come from the file's header, so a strict load can check every key
    before any data is read, and then read, cast and place one tensor at a time. Each read copies
    that tensor's bytes into private memory (no memory map: a mapped file stays resident, and counted,
    until the map is closed), so the peak is the loaded model plus one tensor as stored, never a
    second copy of the file (nor a float32 copy of a float16 file).
    """

    def __init__(self, path: Path, key: str, dtype: torch.dtype, shape: tuple[int, ...], start: int, stop: int) -> None:
        self.path, self.key, self.dtype, self.shape = path, key, dtype, torch.Size(shape)
        self._start, self._stop = start, stop  # byte offsets in the file

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __repr__(self) -> str:
        return f"StoredTensor({self.key!r}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def load(self) -> torch.Tensor:
        """The tensor as stored, on the CPU, in memory of its own."""
        data = torch.empty(self._stop - self._start, dtype=torch.uint8)
        with open(self.path, "rb") as file:
            file.seek(self._start)
            if file.readinto(memoryview(data.numpy())) != data.numel():
                raise ValueError(f"{self.path} is not a readable safetensors file (truncated or corrupt): {self.key} is cut short")
        return data.view(self.dtype).reshape(self.shape)


def read_lazily(path: Path) -> dict[str, torch.Tensor | StoredTensor]:
    """One weights file's tensors by name: a :class:`StoredTensor` per tensor of a safetensors file
    (its header read and checked, no data yet), or the tensors of a pickle (read whole)."""
    if path.name.endswith(_PICKLE_SUFFIXES):
        return _read_pickle(path)
    try:
        return _stored_tensors(path)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt): {_cut(str(error))}") from error


def _stored_tensors(path: Path) -> dict[str, StoredTensor]:
    """The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data
    (offsets count from the data's start)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("no header")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise ValueError(f"header length {length} exceeds the file")
        header = json.loads(file.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        stored, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if stored not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {key!r} is stored as {stored}, which vidiff cannot read")
        dtype = _SAFETENSORS_DTYPES[stored]
        count = 1
        for side in shape:
            count *= int(side)
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end and end - begin == nbytes and 8 + length + end <= size):
            raise ValueError(f"tensor {key!r} lies outside the file or has the wrong size")
        tensors[key] = StoredTensor(path, key, dtype, tuple(shape), 8 + length + begin, 8 + length + end)
    return tensors


def unpickle(path: Path, what: str = "weights file") -> Any:
    """What a pickled weights file holds, read only through ``torch.load(weights_only=True)``.

    A pickle naming any class or function (an object that is not a tensor or plain container) is
    refused, never run; a damaged one is one ValueError calling it "not a readable PyTorch ``what``".
    The caller checks the structure (a flat state dict, a nested one, a training checkpoint).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch says "unsupported GLOBAL <name>" when the pickle names a class or function: an object
        # that is not a tensor. Any other unpickling error is a damaged file, not a security matter.
        refused = re.search(r"GLOBAL (\S+)", str(error), re.IGNORECASE)
        if refused is None:
            raise ValueError(_corrupt(path, error, what)) from error
        raise ValueError(
            f"Refusing to load {path}: it holds objects other than tensors ({refused.group(1)[:80]}), and "
            "vidiff only unpickles plain tensors (torch.load(weights_only=True)) because a pickle can run "
            "arbitrary code. Convert the file to safetensors with a tool you trust."
        ) from error
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the file system's own message says it best
    except (EOFError, OSError, RuntimeError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        # A truncated or overwritten file surfaces as any of these, depending on where it breaks.
        raise ValueError(_corrupt(path, error, what)) from error


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    loaded = unpickle(path)
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"{path} does not hold a flat state dict (a mapping of names to tensors)")
    return dict(loaded)


def _cut(text: str, limit: int = 120) -> str:
    """The first sentence of ``text``, at most ``limit`` characters (torch's messages run to paragraphs)."""
    line = (text.strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _corrupt(path: Path, error: BaseException, what: str = "weights file") -> str:
    """One line for a pickle that cannot be read: the file, and the first line of torch's reason."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    detail = _cut(text) or "unexpected end of file"
    return f"{path} is not a readable PyTorch {what} (truncated or corrupt): {type(error).__name__}: {detail}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` on a temporary name beside ``path``, then rename it onto ``path``.

    The rename is atomic on one file system, so readers see the old file or the complete new one.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temp)
        # Some writers (safetensors) create owner-only files; give the file the permissions a plain
        # open() would, so a shared checkpoint folder or cache stays readable by its group and others.
        os.chmod(temp, 0o666 & ~_current_umask())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda temp: temp.write_text(text, encoding="utf-8"))


def _savable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors of which no two share storage (safetensors refuses shared storage)."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.is_meta:
            raise ValueError(f"state_dict[{key!r}] is on the meta device (no data): load weights first")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen_storages:
            tensor = tensor.clone()  # tied / aliased tensors: save a private copy of each
        elif tensor.numel() > 0:
            seen_storages.add(pointer)
        tensors[key] = tensor
    return tensors


def _split(tensors: dict[str, torch.Tensor], max_shard_size: int) -> list[list[str]]:
    """Greedy split in state-dict order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def save_component(
    folder: Path,
    config: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    weights_name: str,
    variant: str | None = None,
    max_shard_size: int | None = None,
    config_name: str = "config.json",
) -> None:
    """Write one component in the diffusers layout: ``config_name`` plus safetensors weights.

    Above ``max_shard_size`` bytes the weights are split into shards (``W[.variant]-00001-of-0000N``)
    with an index. Every file is written under a temporary name and renamed, so an interrupted save
    leaves no half-written file. Earlier weight files of the same name and variant that this save does
    not rewrite are removed, so a folder never holds both a stale index and a fresh single file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = _save_weights(folder, state_dict, weights_name, variant, max_shard_size)
    _remove_stale(folder, weights_name, variant, keep=set(written))
    write_json(folder / config_name, config)


def _save_weights(
    folder: Path,
    state_dict: Mapping[str, torch.Tensor],
    weights_name: str,
    variant: str | None,
    max_shard_size: int | None,
) -> list[str]:
    """Write the safetensors file(s) and, when sharded, the index; returns the file names written."""
    check_variant(variant)
    if max_shard_size is not None and (isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int)):
        raise TypeError(f"max_shard_size must be an int number of bytes or None, got {max_shard_size!r}")
    if max_shard_size is not None and max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be a positive number of bytes, got {max_shard_size}")
    tensors = _savable(state_dict)
    groups = [list(tensors)] if max_shard_size is None else _split(tensors, max_shard_size)
    named = _with_variant(weights_name, variant)
    if len(groups) == 1:
        files = {f"{named}.safetensors": groups[0]}
    else:
        files = {f"{named}-{i:05d}-of-{len(groups):05d}.safetensors": g for i, g in enumerate(groups, 1)}
    for file_name, keys in files.items():
        shard = {key: tensors[key] for key in keys}
        atomic_write(
            folder / file_name,
            lambda temp, shard=shard: safetensors.torch.save_file(shard, str(temp), metadata={"format": "pt"}),
        )
    written = list(files)
    if len(files) > 1:
        index_name = candidates(weights_name, variant)[1]
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {key: file_name for file_name, keys in files.items() for key in keys}
        write_json(folder / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
        written.append(index_name)
    return written


def _remove_stale(folder: Path, weights_name: str, variant: str | None, keep: set[str]) -> None:
    named = re.escape(_with_variant(weights_name, variant))
    shard = re.compile(rf"{named}-\d{{5}}-of-\d{{5}}\.safetensors")
    family = set(candidates(weights_name, variant)[:2])
    for path in folder.iterdir():
        if path.name not in keep and path.is_file() and (path.name in family or shard.fullmatch(path.name)):
            path.unlink()
