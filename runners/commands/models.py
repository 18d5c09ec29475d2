"""`fer-automl models list | describe NAME`."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the model presets: list, describe (params, MACs, branches)")
    msub = p.add_subparsers(dest="models_cmd", metavar="CMD", required=True)
    ls = msub.add_parser("list", help="list the presets and the attention types")
    ls.set_defaults(func=_list)
    d = msub.add_parser("describe", help="build a preset (or a model-config YAML/JSON file) and describe it")
    d.add_argument("name", help="a preset name (see `models list`) or a file holding a model config")
    d.add_argument("--image-size", type=int, default=224)
    d.add_argument("--num-classes", type=int, default=7)
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=_describe)


def _list(args: argparse.Namespace) -> int:
    from fer_models import ATTENTION_REGISTRY, PRESETS

    print("presets:")
    for name, cfg in PRESETS.items():
        print(f"  {name:16s} backbone={cfg.get('backbone', 'resnet18')}")
    print("attention types: " + ", ".join(ATTENTION_REGISTRY))
    return 0


def _load_config(name: str, num_classes: int):
    from pathlib import Path

    import yaml
    from fer_models import PRESETS, ModelConfig, preset_config

    if name in PRESETS:
        return preset_config(name, num_classes=num_classes)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor a model-config file")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of model-config keys, got {type(data).__name__}")
    data = data.get("model", data)
    data.setdefault("num_classes", num_classes)
    return ModelConfig.model_validate(data)


def _describe(args: argparse.Namespace) -> int:
    from fer_models import build_model
    from fer_models.cost import count_macs, count_params

    if args.image_size < 8:
        raise ValueError(f"--image-size must be >= 8, got {args.image_size}")
    cfg = _load_config(args.name, args.num_classes)
    model = build_model(cfg, image_size=args.image_size)
    info = {
        "name": args.name,
        "params": count_params(model),
        "macs": count_macs(model, args.image_size, cfg.in_chans),
        "image_size": args.image_size,
        "num_classes": cfg.num_classes,
        "branches": model.branches,
        "fused_branches": model.fused_branches,
        "pose_classes": cfg.num_pose_classes if cfg.pose_head else None,
        "config": cfg.model_dump(),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{args.name}: {info['params'] / 1e6:.3f} M parameters, {info['macs'] / 1e9:.3f} GMACs "
          f"at {args.image_size}x{args.image_size}, {cfg.num_classes} classes")
    print(f"  branches: {', '.join(model.branches)}")
    print(f"  fused:    {', '.join(model.fused_branches)} ({cfg.fusion})")
    if cfg.pose_head:
        print(f"  pose head: {cfg.num_pose_classes} classes")
    print("  config: " + ", ".join(f"{k}={v}" for k, v in cfg.model_dump().items()))
    return 0
