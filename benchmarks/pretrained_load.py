"""What loading pretrained backbone weights adds to building a model (issue 12, item 1).

    PYTHONPATH=. python benchmarks/pretrained_load.py [--backbones resnet10t resnet18 mobilenetv3_small_100] [--repeats 3]

For each backbone: `build_model` from scratch, with `pretrained: imagenet` read from a Hugging
Face cache (HF_HUB_OFFLINE=1, a cache built in a temporary folder in the hub's layout, holding
random weights of the backbone's default tag: no network), and with `pretrained_file` (the same
weights as a local .safetensors file, timm's pretrained_cfg_overlay). Median wall time of
--repeats builds each, in one process (the first build of each backbone, untimed, warms timm's
and the project's caches).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["resnet10t", "mobilenetv3_small_100", "resnet18"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pretrained-bench-"))
    cache = tmp / "hub"
    cache.mkdir()
    # huggingface_hub reads these when it is imported: set them before timm imports it
    os.environ.update(HF_HOME=str(tmp), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")

    import timm
    import torch
    from safetensors.torch import save_file

    from benchmarks._machine import cpu_name
    from fer_models import build_model
    from fer_models.pretrained import resolve

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_pretrained import put_in_hub_cache, random_weights

    torch.set_num_threads(1)
    print(f"{cpu_name()}, torch {torch.__version__}, timm {timm.__version__}, 1 thread, "
          f"median of {a.repeats} builds\n")
    print("| backbone | weights (timm name) | file size (MB) | from scratch (s) | HF cache, offline (s) | pretrained_file (s) |")
    print("|---|---|---|---|---|---|")
    for bb in a.backbones:
        name = resolve(bb, "imagenet")
        sd = random_weights(bb)
        put_in_hub_cache(cache, timm.get_pretrained_cfg(name).hf_hub_id, sd)
        local = tmp / f"{bb}.safetensors"
        save_file(sd, str(local))
        cases = {"scratch": {}, "cache": {"pretrained": "imagenet"}, "file": {"pretrained_file": str(local)}}
        times = {}
        for case, kw in cases.items():
            build_model({"backbone": bb, "num_classes": 7, **kw})  # warm
            runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                build_model({"backbone": bb, "num_classes": 7, **kw})
                runs.append(time.perf_counter() - t)
            times[case] = statistics.median(runs)
        mb = local.stat().st_size / 1e6
        print(f"| {bb} | {name} | {mb:.1f} | {times['scratch']:.2f} | {times['cache']:.2f} | {times['file']:.2f} |")


if __name__ == "__main__":
    main()
