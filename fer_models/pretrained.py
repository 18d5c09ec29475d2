"""Pretrained backbone weights the way timm loads them (issue 12, item 1).

`ModelConfig.pretrained` names timm weights of the backbone: "imagenet" is the backbone's default
timm tag (resnet18 -> resnet18.a1_in1k), any other string a timm pretrained tag ("tv_in1k" ->
resnet18.tv_in1k). `ModelConfig.pretrained_file` names a local weight file (safetensors or a
torch checkpoint of the timm model) that timm loads in place of the download, through its own
`pretrained_cfg_overlay=dict(file=PATH)`; with `pretrained` unset it stands for the default tag.

Where the weights come from is timm's and huggingface_hub's business, not ours:
`timm.create_model(name, pretrained=True)` reads the Hugging Face hub (online), the local Hugging
Face cache (`HF_HUB_CACHE` / `HF_HOME`, and only the cache with `HF_HUB_OFFLINE=1`), or the file
of the overlay. What this module adds is FER-specific: the tag is checked against
`timm.list_pretrained()` before anything is built (so a search space or a trial config fails at
validation), and a failed download / cache miss becomes one `UserError` that says how to supply
the weights instead of a hub stack trace.

`pretrained_path` (fer_models.model.load_pretrained) is the other, older route: a state dict of
the backbone or of a whole fer-automl model, loaded after the build, tolerant of missing keys.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from .errors import UserError, UserPathError

DEFAULT_TAG = "imagenet"  # the backbone's default timm tag
NO_WEIGHTS = ("fercnn",)  # backbones of this project without released weights


def available_tags(arch: str) -> List[str]:
    """The timm pretrained tags of an architecture that have weights ('a1_in1k', 'tv_in1k', ...)."""
    import timm

    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*") if "." in n]


def resolve(backbone: str, pretrained: Optional[str], pretrained_file: Optional[str] = None) -> Optional[str]:
    """The timm model name (with its tag) whose weights `pretrained` / `pretrained_file` ask for,
    None when they ask for none. Raises a UserError naming the backbone and tag for a backbone
    without weights or a tag timm does not have. Never touches the network or the disk."""
    if pretrained is None and pretrained_file is None:
        return None
    key = "pretrained" if pretrained is not None else "pretrained_file"
    if backbone in NO_WEIGHTS:
        raise UserError(f"{key}={pretrained if pretrained is not None else pretrained_file!r}: backbone "
                        f"{backbone!r} has no pretrained weights (it trains from scratch); leave {key} unset, "
                        "or load a state dict of an earlier fer-automl model with pretrained_path")
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, name_tag = split_model_name_tag(backbone)
    tags = available_tags(arch)
    if pretrained is None or pretrained == DEFAULT_TAG:
        if name_tag:
            tag = name_tag
        else:
            try:
                cfg = get_pretrained_cfg(arch)
            except RuntimeError:
                cfg = None
            tag = getattr(cfg, "tag", None) if cfg is not None else None
            tag = tag if tag in tags else (tags[0] if tags else None)
        if tag is None:
            if pretrained_file is not None:
                return arch  # a file for an architecture timm has no weights of: timm's default config
            raise UserError(f"pretrained={pretrained!r}: timm has no pretrained weights for backbone {backbone!r}; "
                            "leave pretrained unset (train from scratch) or name a local file with pretrained_file")
    else:
        tag = pretrained
        if name_tag and name_tag != tag:
            raise UserError(f"pretrained={tag!r} contradicts the tag of backbone {backbone!r}; name the tag once "
                            f"(backbone: {arch}, pretrained: {tag})")
    if tag not in tags:
        listed = ", ".join(tags) if tags else "none"
        raise UserError(f"pretrained={tag!r} is not a timm pretrained tag of backbone {arch!r}; "
                        f"its tags: {listed} (or {DEFAULT_TAG!r} for the default)")
    return f"{arch}.{tag}"


def hub_cache_dir() -> str:
    """The Hugging Face hub cache huggingface_hub reads (HF_HUB_CACHE, else HF_HOME/hub)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - timm requires huggingface_hub
        return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")


def _cfg(timm_name: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(timm_name)
    except RuntimeError:
        return None


def _hf_repo(timm_name: str) -> Optional[str]:
    cfg = _cfg(timm_name)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def _weights_source(timm_name: str) -> str:
    cfg = _cfg(timm_name)
    if cfg is not None and cfg.hf_hub_id:
        return f"Hugging Face repo {cfg.hf_hub_id}"
    if cfg is not None and cfg.url:
        return f"URL {cfg.url}"
    return "no download source"


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _is_fetch_failure(exc: BaseException) -> bool:
    """A failed download or cache miss (as opposed to a bug): huggingface_hub's local-entry and
    offline errors, HTTP/connection errors, torch.hub's URL errors."""
    from urllib.error import URLError

    names = {t.__name__ for t in type(exc).__mro__}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError", "ConnectionError",
                         "ConnectError", "TimeoutException", "HTTPError", "RepositoryNotFoundError",
                         "EntryNotFoundError"}) or isinstance(exc, (URLError, TimeoutError))


@contextmanager
def fetch_errors(backbone: str, pretrained: Optional[str], timm_name: str,
                 pretrained_file: Optional[str] = None) -> Iterator[None]:
    """Turn what timm/huggingface_hub raise when the weights cannot be had into one UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised
        what = f"backbone {backbone!r} pretrained={pretrained or DEFAULT_TAG!r} (timm weights {timm_name})"
        if pretrained_file is not None:
            text = " ".join(str(exc).split())  # timm's strict-load error spans many lines: one, cut short
            text = text if len(text) <= 400 else text[:397] + "..."
            raise UserError(f"pretrained_file {pretrained_file!r}: timm could not load it as the weights of "
                            f"{what}: {type(exc).__name__}: {text}") from None
        if "loading state_dict" in str(exc):  # torch's strict load: the cached file is not this model's
            text = " ".join(str(exc).split())
            repo = _hf_repo(timm_name)
            where = (f"remove models--{repo.replace('/', '--')} from the Hugging Face cache {hub_cache_dir()}"
                     if repo else "remove them from the cache") + " and fetch them again"
            raise UserError(f"{what}: the weights found do not fit the model ({text[:300]}); {where}") from None
        if not _is_fetch_failure(exc):
            raise
        where = ("HF_HUB_OFFLINE=1: only the local cache is read" if _offline()
                 else "the hub could not be reached")
        raise UserError(
            f"{what}: the weights are not in the local Hugging Face cache {hub_cache_dir()} and {where} "
            f"({_weights_source(timm_name)}). Supply them: run once online (without HF_HUB_OFFLINE) to fill the "
            f"cache, e.g. python -c \"import timm; timm.create_model('{timm_name}', pretrained=True)\", "
            f"or point HF_HUB_CACHE at a cache that has them, or name a local weight file with "
            f"pretrained_file: PATH") from None


def create_kwargs(backbone: str, pretrained: Optional[str],
                  pretrained_file: Optional[str]) -> Tuple[str, dict, Optional[str]]:
    """(timm model name, timm.create_model keyword arguments, resolved name or None) for the
    weights asked for. Checks that a named file exists (the error names the key and the path)."""
    timm_name = resolve(backbone, pretrained, pretrained_file)
    if timm_name is None:
        return backbone, {"pretrained": False}, None
    kwargs: dict = {"pretrained": True}
    if pretrained_file is not None:
        p = Path(pretrained_file).expanduser()
        if p.is_dir():
            raise UserPathError(f"pretrained_file {pretrained_file!r} is a folder, not a weight file")
        if not p.is_file():
            raise UserPathError(f"pretrained_file {pretrained_file!r}: no such file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(p)}  # timm's own local-file route
    return timm_name, kwargs, timm_name


def timm_weights_name(cfg) -> Optional[str]:
    """The tagged timm name of a ModelConfig's weights (None: from scratch); used for the
    normalisation of the pretrained config."""
    return resolve(cfg.backbone, getattr(cfg, "pretrained", None), getattr(cfg, "pretrained_file", None))


def without_weights(cfg):
    """A copy of a ModelConfig that builds without fetching timm weights: for rebuilding a trained
    model whose own state dict is loaded next (export, predict), which must not need the hub."""
    return cfg.model_copy(update={"pretrained": None, "pretrained_file": None})
