"""`fer-automl models list | describe NAME | import-weights FILE`."""
from __future__ import annotations

import argparse
import json


from runners.registry.model_files import IMAGE_SIZE_RANGE, NUM_CLASSES_RANGE, check_range, load_model_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the model presets: list, describe (params, MACs, branches)")
    msub = p.add_subparsers(dest="models_cmd", metavar="CMD", required=True)
    ls = msub.add_parser("list", help="list the presets and the attention types")
    ls.set_defaults(func=_list)
    d = msub.add_parser("describe", help="build a preset (or a model-config YAML/JSON file) and describe it")
    d.add_argument("name", help="a preset name (see `models list`) or a file holding a model config")
    d.add_argument("--image-size", type=int, default=224,
                   help=f"input side in pixels, {IMAGE_SIZE_RANGE[0]}..{IMAGE_SIZE_RANGE[1]} (default 224)")
    d.add_argument("--num-classes", type=int, default=7,
                   help=f"expression classes, {NUM_CLASSES_RANGE[0]}..{NUM_CLASSES_RANGE[1]} (default 7; "
                        "a config file's own num_classes wins)")
    d.add_argument("--backbone", default=None,
                   help="build the preset or config on this backbone instead (e.g. fercnn, lcnet_050: "
                        "see `models list`)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=_describe)
    iw = msub.add_parser("import-weights",
                         help="map an official checkpoint (MA-Net, MA-Net MS-Celeb, VGGFace2 ResNet-50) onto a "
                              "preset: writes a state dict to use as pretrained_path")
    iw.add_argument("file", help="the official checkpoint (.pth, .pth.tar, .pkl); read without running pickled code")
    iw.add_argument("--from", dest="layout", default=None,
                    help="its layout: ma_net, ma_net_msceleb, vggface2_resnet50, scan_cci (default: detected from its keys)")
    iw.add_argument("--preset", required=True, help="a preset name (see `models list`) or a model-config file")
    iw.add_argument("--num-classes", type=int, default=None,
                    help="classes of the model (default: the file's classifier rows for ma_net, else 7)")
    iw.add_argument("--partial", action="store_true",
                    help="write the tensors that map even when part of the layout's scope stays empty")
    iw.add_argument("--out", required=True, help="the .pt state dict to write")
    iw.add_argument("--list", action="store_true", help="also print every mapped and every left-over key")
    iw.set_defaults(func=_import_weights)


def _list(args: argparse.Namespace) -> int:
    from fer_models import ATTENTION_REGISTRY, PRESETS

    print("presets:")
    for name, cfg in PRESETS.items():
        print(f"  {name:16s} backbone={cfg.get('backbone', 'resnet18')}")
    print("attention types: " + ", ".join(ATTENTION_REGISTRY))
    from fer_models.backbone import COMPACT_BACKBONES

    print("compact backbones (48-64 px faces; --backbone of describe): " + ", ".join(COMPACT_BACKBONES)
          + " (fercnn: fercnn_width, fercnn_depth; no pretrained weights)")
    return 0


def _describe(args: argparse.Namespace) -> int:
    from fer_models import build_model
    from fer_models.cost import count_macs, count_params

    check_range("--image-size", args.image_size, IMAGE_SIZE_RANGE)
    check_range("--num-classes", args.num_classes, NUM_CLASSES_RANGE)
    cfg = load_model_config(args.name, args.num_classes)
    if args.backbone is not None:
        from pydantic import ValidationError

        from fer_models.errors import user_error_from_validation

        try:
            cfg = cfg.model_copy(update={"backbone": args.backbone})
            cfg = type(cfg).model_validate(cfg.model_dump())
        except ValidationError as exc:
            raise user_error_from_validation(exc, source="--backbone") from None
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


def _import_weights(args: argparse.Namespace) -> int:
    from fer_models import build_model
    from fer_models.errors import UserError
    from fer_models.official_weights import LAYOUTS, detect_layout, import_state_dict, read_official, save_imported

    if args.layout is not None and args.layout not in LAYOUTS:
        raise UserError(f"--from {args.layout!r}: unknown layout; valid: {', '.join(LAYOUTS)}")
    if args.num_classes is not None:
        check_range("--num-classes", args.num_classes, NUM_CLASSES_RANGE)
    sd, kind, skipped = read_official(args.file)
    layout = args.layout or detect_layout(sd, kind)
    num_classes = args.num_classes
    if num_classes is None:
        fc = sd.get({"ma_net": "fc_1.weight", "scan_cci": "attention.fc.weight"}.get(layout or "", ""))
        num_classes = fc.shape[0] if fc is not None else 7
        if not NUM_CLASSES_RANGE[0] <= num_classes <= NUM_CLASSES_RANGE[1]:
            raise UserError(f"{args.file}: its classifier has {num_classes} rows; give --num-classes")
    cfg = load_model_config(args.preset, num_classes)
    model = build_model(cfg)
    rep = import_state_dict(sd, kind, skipped, args.file, layout, model, args.partial)
    out = save_imported(rep, args.out)
    from runners.registry.imported import write_sidecar  # what `promote --weights` reads back: layout, preset, source

    side = write_sidecar(out, layout=layout, preset=args.preset, num_classes=cfg.num_classes, source=args.file)
    print(f"{args.file} -> {out} ({args.preset}, num_classes={cfg.num_classes}; provenance for promote --weights: "
          f"{side.name})")
    print("  " + rep.summary())
    if rep.skipped_objects:
        print(f"  skipped pickled objects (not run): {', '.join(rep.skipped_objects)}")
    if args.list:
        for k, tk in rep.mapped.items():
            print(f"  mapped   {k} -> {tk}")
        for k in rep.left_in_file:
            print(f"  file only  {k}")
        for k in rep.left_in_model:
            print(f"  model only {k}")
    elif rep.left_in_file:
        print(f"  left over in the file: {', '.join(rep.left_in_file[:6])}{' ...' if len(rep.left_in_file) > 6 else ''}")
    if layout == "scan_cci" and cfg.patch_split != "ceil_official":
        print("  the published network cuts its bottom patches its own way: build it with patch_split: ceil_official")
    if rep.left_in_model:
        print(f"  PARTIAL: not filled: {', '.join(rep.left_in_model[:6])}{' ...' if len(rep.left_in_model) > 6 else ''}")
    return 0
