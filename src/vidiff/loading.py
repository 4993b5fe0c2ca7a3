"""Checkpoints in the diffusers layout: open a folder or Hub repo, read configs and weights, load strictly.

A pipeline checkpoint is a folder (or Hub repo) with ``model_index.json`` and one subfolder per
component (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``, ``scheduler/``, ...).
Hub repos are read through huggingface_hub's cache and only the files a caller asks for are downloaded;
offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True`` or no network) the cached snapshot is used.
File names and formats of weights live in :mod:`vidiff.weight_files`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, list_repo_files, try_to_load_from_cache
from huggingface_hub.utils import (
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    validate_repo_id,
)

from . import weight_files
from .config import RawConfig
from .strict_loading import check_dtype, load_state_dict_strict, summarize_keys
from .weight_files import StoredTensor, save_component, write_json

__all__ = [
    "DEFAULT_DTYPE",
    "Checkpoint",
    "CheckpointNotCachedError",
    "CheckpointNotFoundError",
    "join",
    "load_state_dict_strict",
    "pick_dtype",
    "save_component",
    "write_json",
]

logger = logging.getLogger(__name__)

try:  # huggingface_hub >= 1.0 speaks httpx; its connection errors are not OSErrors
    import httpx

    _UNREACHABLE: tuple[type[BaseException], ...] = (OSError, httpx.TransportError)
except ImportError:  # older huggingface_hub: requests' errors are OSErrors
    _UNREACHABLE = (OSError,)

_LAYOUT_HINT = "a diffusers-layout checkpoint folder has model_index.json and one subfolder per component"


class CheckpointNotFoundError(FileNotFoundError):
    """A Hub checkpoint that can be neither downloaded nor found in the local cache."""


class CheckpointNotCachedError(CheckpointNotFoundError):
    """A Hub checkpoint that may not or could not be downloaded and is not in the local cache.

    Carries the facts (``repo_id``, ``revision``, ``cache`` folder, ``offline_reason``) so that a
    front end (the CLI) can word the advice in its own terms.
    """

    def __init__(self, message: str, *, repo_id: str, revision: str | None, cache: Path, offline_reason: str) -> None:
        super().__init__(message)
        self.repo_id, self.revision, self.cache, self.offline_reason = repo_id, revision, cache, offline_reason


# The dtype networks load in when none is asked for: float32, as diffusers and transformers load them
# (fp16 variant files are upcast), so a pipeline never mixes the stored dtypes of its components.
DEFAULT_DTYPE = torch.float32


def pick_dtype(dtype: torch.dtype | None, torch_dtype: torch.dtype | None) -> torch.dtype:
    """Merge ``dtype`` with its diffusers alias ``torch_dtype``; neither given means :data:`DEFAULT_DTYPE`."""
    check_dtype(dtype, "dtype")
    check_dtype(torch_dtype, "torch_dtype")
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass only dtype")
    chosen = dtype if dtype is not None else torch_dtype
    return DEFAULT_DTYPE if chosen is None else chosen


def join(subfolder: str | None, name: str) -> str:
    """Relative path of ``name`` inside a component ``subfolder`` (``None`` or "" for the root)."""
    subfolder = (subfolder or "").strip("/")
    return f"{subfolder}/{name}" if subfolder else name


class _FolderFiles:
    """Files of a local folder: a checkpoint folder, or a Hub snapshot in the cache while offline."""

    def __init__(self, root: Path, offline_note: str = "") -> None:
        self.root = root
        self.where = str(root)
        # Why files may be missing from a cached snapshot: only what was downloaded before is there.
        self.missing_note = offline_note

    def describe(self, subfolder: str | None) -> str:
        return str(self.root / join(subfolder, ""))

    def describe_file(self, relpath: str) -> str:
        return str(self.root / relpath)

    def names_in(self, subfolder: str | None) -> list[str]:
        folder = self.root / join(subfolder, "")
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def exists(self, relpath: str) -> bool:
        return (self.root / relpath).is_file()

    def path(self, relpath: str) -> Path:
        return self.root / relpath


class _HubFiles:
    """Files of a Hub repo, listed once and downloaded one by one into huggingface_hub's cache."""

    def __init__(self, repo_id: str, revision: str | None, cache_dir: Any, listing: Sequence[str]) -> None:
        self.repo_id, self.revision, self.cache_dir = repo_id, revision, cache_dir
        self.listing = frozenset(listing)
        self.where = f"Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
        self.missing_note = ""

    def describe(self, subfolder: str | None) -> str:
        return f"folder {subfolder!r} of {self.where}" if subfolder else self.where

    def describe_file(self, relpath: str) -> str:
        return f"{relpath} in {self.where}"

    def names_in(self, subfolder: str | None) -> list[str]:
        prefix = join(subfolder, "")
        return sorted(f[len(prefix):] for f in self.listing if f.startswith(prefix) and "/" not in f[len(prefix):])

    def exists(self, relpath: str) -> bool:
        return relpath in self.listing

    def path(self, relpath: str) -> Path:
        # huggingface_hub still checks a cached file is current; the log says whether bytes will move.
        cached = try_to_load_from_cache(self.repo_id, relpath, cache_dir=self.cache_dir, revision=self.revision)
        logger.info("%s: %s %s", self.repo_id, relpath, "found in the cache" if isinstance(cached, str) else "downloading")
        try:
            local = hf_hub_download(self.repo_id, relpath, revision=self.revision, cache_dir=self.cache_dir)
        except _UNREACHABLE as error:
            raise CheckpointNotFoundError(f"Could not download {relpath} from {self.where}: {error}") from error
        return Path(local)


class Checkpoint:
    """A resolved checkpoint: a local folder, or a Hub repo id whose files are fetched on demand.

    Open one with :meth:`open`. Paths given to its methods are relative to the checkpoint root and use
    "/" (``"unet/config.json"``); build them with :func:`join`.
    """

    def __init__(self, name: str, files: _FolderFiles | _HubFiles) -> None:
        self.name = name  # what the user passed, for messages
        self._files = files

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r} at {self._files.where})"

    @classmethod
    def open(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
    ) -> Checkpoint:
        """Resolve a local folder, or a Hub id ``"org/name"`` (online: list its files; offline: the cache).

        ``revision`` (branch, tag or commit), ``cache_dir`` and ``local_files_only`` apply to Hub ids and
        follow huggingface_hub (default cache from ``HF_HOME``/``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1``
        means no network).
        """
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(f"name_or_path must be a folder path or a Hub repo id, got {type(name_or_path).__name__}")
        if revision is not None and not isinstance(revision, str):
            raise TypeError(f"revision must be a branch, tag or commit str, got {revision!r}")
        name = os.fspath(name_or_path)
        if not name.strip():  # Path("") is the current folder: never what an empty argument meant
            raise ValueError('`name_or_path` is empty; pass a checkpoint folder or a Hub id (use "." for the current folder)')
        path = Path(name).expanduser()
        if path.is_dir():
            logger.debug("%s: a local folder", name)
            return cls(name, _FolderFiles(path))
        if path.exists():
            raise FileNotFoundError(f"{name} is a file; expected a checkpoint folder ({_LAYOUT_HINT}) or a Hub repo id")
        if isinstance(name_or_path, str) and _looks_like_repo_id(name):
            return cls._open_hub(name, revision, cache_dir, local_files_only)
        raise FileNotFoundError(
            f"No checkpoint folder at {name!r}, and it is not a Hub repo id of the form 'org/name'"
        )

    @classmethod
    def _open_hub(
        cls, repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None, local_files_only: bool | None
    ) -> Checkpoint:
        offline_reason = _offline_reason(local_files_only)
        if offline_reason is None:
            try:
                listing = list_repo_files(repo_id, revision=revision)
            except RepositoryNotFoundError as error:
                raise CheckpointNotFoundError(
                    f"Hub repo {repo_id!r} was not found, or it is private or gated and needs a login "
                    f"(`hf auth login`): {error}"
                ) from error
            except RevisionNotFoundError as error:
                raise CheckpointNotFoundError(f"Hub repo {repo_id!r} has no revision {revision!r}") from error
            except _UNREACHABLE as error:
                offline_reason = f"the Hub could not be reached ({type(error).__name__}: {error})"
            else:
                hub_cache = None if cache_dir is None else os.fspath(cache_dir)
                return cls(repo_id, _HubFiles(repo_id, revision, hub_cache, listing))
        cache = Path(cache_dir if cache_dir is not None else hub_constants.HF_HUB_CACHE).expanduser()
        snapshot = _cached_snapshot(cache, repo_id, revision)
        wanted = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        if snapshot is None:
            raise CheckpointNotCachedError(
                f"Cannot open {wanted}: it is not a local folder and not in the local Hugging Face cache at "
                f"{cache}, and downloads are off or failed: {offline_reason}. Run once with network access "
                f"(or `hf download {repo_id}`) to fill the cache, point cache_dir / HF_HOME at a cache that "
                "holds it, or pass a local checkpoint folder.",
                repo_id=repo_id, revision=revision, cache=cache, offline_reason=offline_reason,
            )
        logger.info("Using the cached snapshot %s of %s (%s).", snapshot, wanted, offline_reason)
        note = f" (a cached snapshot of {wanted}: only files downloaded earlier are there; {offline_reason})"
        return cls(repo_id, _FolderFiles(snapshot, offline_note=note))

    def has_file(self, relpath: str) -> bool:
        """Whether the checkpoint holds ``relpath`` (no download)."""
        return self._files.exists(relpath)

    def local_path(self, relpath: str) -> Path:
        """Local path of one file, downloaded first for Hub checkpoints."""
        if not self._files.exists(relpath):
            raise FileNotFoundError(f"{self._files.where} has no {relpath}{self._files.missing_note}")
        return self._files.path(relpath)

    def read_json(self, relpath: str) -> RawConfig:
        """Parse a JSON object (``model_index.json``, ``unet/config.json``...); a dict that remembers
        its file, so that a :class:`~vidiff.config.ConfigError` built from it names the file."""
        if not self._files.exists(relpath):
            raise FileNotFoundError(
                f"{self._files.where} has no {relpath}; {_LAYOUT_HINT}{self._files.missing_note}"
            )
        path = self._files.path(relpath)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{relpath} in {self._files.where} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{relpath} in {self._files.where} holds a {type(data).__name__}, not a JSON object")
        return RawConfig(data, str(path))

    def _weight_files(self, subfolder: str | None, variant: str | None, weights_name: str, warn: bool = True) -> list[str]:
        """Relative paths of the weight files to read for one component (shards through their index)."""
        weight_files.check_variant(variant)
        where = self._files.describe(subfolder)
        try:
            chosen = weight_files.choose(self._files.names_in(subfolder), weights_name, variant, where, warn)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}{self._files.missing_note}") from None
        if not weight_files.is_index(chosen):
            return [join(subfolder, chosen)]
        index_path = join(subfolder, chosen)
        weight_map = weight_files.shard_names(self.read_json(index_path), index_path)
        shards = [join(subfolder, shard) for shard in sorted(set(weight_map.values()))]
        for shard in shards:
            if not self._files.exists(shard):
                raise FileNotFoundError(
                    f"{self._files.where} has no {shard}, named by {index_path}{self._files.missing_note}"
                )
        return shards

    def weights_source(
        self, subfolder: str | None, *, variant: str | None = None, weights_name: str = "diffusion_pytorch_model"
    ) -> str:
        """Where a component's weights are, for messages: the weights file, or how many shards where."""
        files = self._weight_files(subfolder, variant, weights_name, warn=False)  # warned when loading
        if len(files) == 1:
            return self._files.describe_file(files[0])
        return f"the {len(files)} weight shards in {self._files.describe(subfolder)}"

    def fetch_component(
        self, subfolder: str | None, *, variant: str | None = None, weights_name: str = "diffusion_pytorch_model"
    ) -> None:
        """Make sure a component's config and weights are local (downloads them for Hub checkpoints).

        Lets a pipeline fetch every component before it spends time building any of them.
        """
        for relpath in [join(subfolder, "config.json"), *self._weight_files(subfolder, variant, weights_name)]:
            self.local_path(relpath)

    def load_state_dict(
        self, subfolder: str | None, *, variant: str | None = None, weights_name: str = "diffusion_pytorch_model"
    ) -> dict[str, torch.Tensor]:
        """Read a component's weights onto the CPU, as stored (no cast).

        Safetensors are preferred over pickles of the same variant; a missing ``variant`` falls back to
        the default weights with a warning; sharded weights are read through their index.
        """
        state = self.open_state_dict(subfolder, variant=variant, weights_name=weights_name)
        return {key: value.load() if isinstance(value, StoredTensor) else value for key, value in state.items()}

    def open_state_dict(
        self, subfolder: str | None, *, variant: str | None = None, weights_name: str = "diffusion_pytorch_model"
    ) -> dict[str, torch.Tensor | StoredTensor]:
        """Like :meth:`load_state_dict`, but safetensors tensors are :class:`~vidiff.weight_files.StoredTensor`
        handles (shape and dtype known, data not read yet), so :func:`load_state_dict_strict` reads,
        casts and places them one at a time. Pickles are read whole."""
        state: dict[str, torch.Tensor | StoredTensor] = {}
        for relpath in self._weight_files(subfolder, variant, weights_name):
            part = weight_files.read_lazily(self.local_path(relpath))
            repeated = state.keys() & part.keys()
            if repeated:
                raise ValueError(f"{relpath} repeats tensors of an earlier shard: {summarize_keys(sorted(repeated))}")
            state.update(part)
        return state


def _looks_like_repo_id(name: str) -> bool:
    if name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline_reason(local_files_only: bool | None) -> str | None:
    """Why the Hub must not be contacted, or ``None`` when it may be."""
    if local_files_only:
        return "local_files_only=True"
    # huggingface_hub reads HF_HUB_OFFLINE at import; the environment is checked too so that setting
    # it later in the same process still keeps vidiff off the network.
    if hub_constants.HF_HUB_OFFLINE or _env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    return None


def _cached_snapshot(cache: Path, repo_id: str, revision: str | None) -> Path | None:
    """Snapshot folder ``<cache>/models--org--name/snapshots/<commit>`` for a revision, if cached.

    A branch or tag is resolved through ``refs/<revision>``; a commit hash names its snapshot directly.
    Partial snapshots are fine: vidiff only reads the files it needs.
    """
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    ref = repo_folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None
