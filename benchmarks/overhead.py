"""What the platform costs a trial (issue 5), measured in one run:

1. throughput: images/s of one trial of a real search (`python -m runners.cli search`, i.e.
   `fer-automl search`: local Ray, Ray Tune, MLflow tracking in a SQLite store, a checkpoint every
   epoch) against a bare loop training the same model on the same data, batch size, epochs and
   torch threads (plain torch: no Ray, no MLflow, no checkpoint). Each side runs in its own
   process, interleaved (bare, platform, bare, platform, ...); the table gives medians. The
   figure the requirement (ratio >= 0.9 on CPU) is judged on is the epoch cycle: training images
   over the wall clock from one epoch's start to the next one's (the trial's `epoch_start` marks;
   the bare loop's own epoch starts), so it counts validation on both sides and, in the platform,
   the checkpoint, tune.report and Tune's hand-back; epoch 1 (warm-up) is left out.
2. start-up: seconds from launching `fer-automl search` to the first trial's first training step,
   broken down by the marks the platform writes to $FER_AUTOML_TIMING_FILE (runners.training.trial.mark).
3. memory: peak RSS summed over the search's driver and every process under it (the local Ray's
   services and workers), sampled every 0.2 s, for a search of 2 concurrent 1-CPU trials.
4. GPU (`--device cuda`): --trials trials sharing one GPU (--gpu-fraction each), sampled with
   nvidia-smi, against one bare loop alone on the GPU. Fails at once without CUDA.

    PYTHONPATH=. python benchmarks/overhead.py [--epochs 4] [--n 1200] [--image-size 64]
        [--preset baseline] [--batch-size 64] [--repeats 3] [--threads 1]
    PYTHONPATH=. python benchmarks/overhead.py --device cuda --gpu-fraction 0.25 --trials 4

Ray gives a trial with `cpu: N` OMP_NUM_THREADS=N (torch then runs N threads); the bare loop gets
OMP_NUM_THREADS=N and torch.set_num_threads(N). Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _machine import cpu_name  # noqa: E402 (benchmarks/ is on sys.path: the script's folder)

# the marks runners.search.driver / runners.training.trial write, in the order they happen
MARKS = [("search_start", "CLI started (python, imports)"),
         ("dataset_loaded", "dataset generated and checked by the driver"),
         ("ray_started", "local Ray started"),
         ("fit_start", "MLflow parent run written, Tuner built"),
         ("trial_start", "trial function running in its Ray worker"),
         ("trial_data_loaded", "dataset loaded in the trial"),
         ("first_step", "first optimizer step done")]


# the marks runners.training.trial writes every epoch, in order
EPOCH_MARKS = ["epoch_start", "train_done", "val_done", "checkpoint_saved", "reported"]
# the parts of an epoch cycle: (key, from mark, to mark (None: the next epoch's start), label)
PARTS = [("train_s", "epoch_start", "train_done", "training"),
         ("val_s", "train_done", "val_done", "validation"),
         ("ckpt_s", "val_done", "checkpoint_saved", "checkpoint written (state.pt, best_model.pt, config)"),
         ("report_s", "checkpoint_saved", "reported", "tune.report (checkpoint persisted to storage, result "
                                                      "handed to Tune, waiting to be resumed)"),
         ("tail_s", "reported", None, "after the report: old local checkpoints removed, next epoch")]


def import_psutil():
    """psutil ships inside Ray (ray/thirdparty_files); `import ray` puts it on the path."""
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401
        import psutil
    return psutil


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every 2 s while one side runs (other jobs share it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.values: List[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.values.append(os.getloadavg()[0])
            self.stop.wait(2.0)

    def mean(self) -> float:
        self.stop.set()
        self.join()
        return statistics.mean(self.values) if self.values else float("nan")


def children_cpu() -> float:
    """user + system CPU seconds of every descendant this process has reaped (with theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --- the one point every run trains -------------------------------------------------------------

def write_space(path: Path, a, name: str, *, trials: int, cpu: float, gpu: float) -> Path:
    """A space with one point: the preset's model, fixed training settings; grid search, FIFO."""
    from fer_models.presets import PRESET_LOSS_WEIGHTING, PRESETS

    consts: Dict[str, Any] = {f"model.{k}": v for k, v in PRESETS[a.preset].items()}
    consts.update({"train.optimizer": "adamw", "train.epochs": a.epochs, "train.batch_size": a.batch_size,
                   "train.schedule": "cosine", "train.seed": 0,
                   "train.loss_weighting": PRESET_LOSS_WEIGHTING.get(a.preset, "fixed"),
                   "data.image_size": a.image_size, "data.aug_strength": a.aug})
    space = {
        "description": "benchmarks/overhead.py: one fixed point",
        "dimensions": {"lr": {"type": "choice", "values": [a.lr]}},
        "constants": consts,
        "search": {"name": name, "dataset": {"format": "synthetic", "n": a.n, "image_size": a.image_size},
                   "algorithm": "grid", "scheduler": {"type": "fifo"}, "num_samples": trials,
                   "max_concurrent": trials, "resources": {"cpu": cpu, "gpu": gpu}, "max_failures": 0, "seed": 0},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# --- side 1: the bare loop (runs in its own process: `--bare-json OUT`) ----------------------------

def bare_main(a) -> None:
    import torch

    from fer_models import build_model
    from fer_models.losses import build_loss
    from runners.data.torch_data import make_loader
    from runners.data.transforms import build_eval_transform, build_train_transform, normalization_for
    from runners.training.trial import DataSpec
    from search_spaces import load_space

    t_start = time.time()
    torch.set_num_threads(a.threads)
    space = load_space(a.space)
    cfg = space.validate({"lr": a.lr})
    size = int(cfg.data.image_size)
    # what runners.search.driver.data_spec_from hands the trial for this search spec
    ds = DataSpec(format="synthetic", options={"n": a.n, "size": a.image_size}, seed=0).load(size)
    dev = torch.device(a.device)
    amp = channels_last = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    mcfg = cfg.model.model_copy(update={"num_classes": len(ds.classes)})
    model = build_model(mcfg, image_size=size).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(model, cfg.train.loss_weighting).to(dev)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    mean, std = normalization_for(mcfg.backbone)
    bs = int(cfg.train.batch_size)
    train_loader = make_loader(ds, "train", bs, build_train_transform(size, float(cfg.data.aug_strength), mean, std),
                               seed=0)
    val_loader = make_loader(ds, "val", bs, build_eval_transform(size, mean, std), shuffle=False)
    epochs = []
    t_first = None
    for _ in range(int(cfg.train.epochs)):
        t_epoch = time.time()
        model.train()
        t0, seen, total = time.perf_counter(), 0, 0.0
        for x, y, pose in train_loader:
            x, y, pose = x.to(dev), y.to(dev), pose.to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = loss_fn(out, y, pose).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if t_first is None:
                t_first = time.time()
            seen += len(y)
            total += float(loss.detach()) * len(y)  # a bare loop tracks its loss too
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        model.eval()
        t1 = time.perf_counter()
        correct, val_loss = 0, 0.0
        with torch.no_grad():  # validation loss and accuracy: what any training loop looks at per epoch
            for x, y, pose in val_loader:
                x, y = x.to(dev), y.to(dev)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(x)
                val_loss += float(loss_fn(out, y, pose.to(dev)).total) * len(y)
                correct += int((out.logits.float().argmax(1) == y).sum())
        epochs.append({"images": seen, "train_s": train_s, "val_s": time.perf_counter() - t1, "start": t_epoch,
                       "train_loss": total / max(seen, 1), "val_correct": correct})
    Path(a.bare_json).write_text(json.dumps({"epochs": epochs, "threads": torch.get_num_threads(),
                                             "t_start": t_start, "t_first_step": t_first}))


def run_bare(a, space: Path, work: Path, tag: str, device: str) -> Dict[str, Any]:
    out = work / f"bare_{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-json", str(out), "--space", str(space),
           "--device", device, "--threads", str(a.threads), "--n", str(a.n), "--image-size", str(a.image_size),
           "--lr", str(a.lr)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(a.threads)}
    load = LoadSampler()
    load.start()
    cpu0, t0 = children_cpu(), time.time()
    with open(work / f"bare_{tag}.log", "w") as log:
        # a session of its own, like the search below: with the kernel's autogroup scheduling each
        # session gets an equal share of the CPUs when other jobs compete for them
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            start_new_session=True).returncode
    wall = time.time() - t0
    cpu = children_cpu() - cpu0
    if rc != 0:
        raise SystemExit(f"bare loop failed (exit {rc}); see {work / f'bare_{tag}.log'}")
    res = json.loads(out.read_text())
    res.update(wall_s=wall, cpu_s=cpu, load=load.mean())
    return res


# --- side 2: a real search (`python -m runners.cli search`, what `fer-automl search` runs) -----------

class TreeSampler(threading.Thread):
    """Walks a process and all its descendants every `period` s: the peak of their summed RSS (and
    where it sits), the peak of their summed PSS (every 10th walk: it reads smaps), and the CPU
    seconds they used (each process's last reading: up to `period` s of a process that exits
    between two walks is missed)."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.psutil = import_psutil()
        self.root = self.psutil.Process(pid)
        self.period = period
        self.stop = threading.Event()
        self.peak: Dict[str, Any] = {"total": 0}
        self.peak_pss = 0
        self.cpu: Dict[int, float] = {}
        self.samples = 0

    def run(self) -> None:
        ps = self.psutil
        while not self.stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except ps.Error:
                break
            parts = {"driver": 0, "ray services": 0, "ray workers": 0}
            workers: List[int] = []
            pss, n = 0, 0
            full = self.samples % 10 == 0
            for p in procs:
                try:
                    with p.oneshot():
                        rss = p.memory_info().rss
                        name = p.name()
                        t = p.cpu_times()
                    if full:
                        pss += p.memory_full_info().pss
                except ps.Error:
                    continue
                n += 1
                self.cpu[p.pid] = t.user + t.system
                if p.pid == self.root.pid:
                    kind = "driver"
                elif name.startswith("ray::") and not name.startswith(("ray::Dashboard", "ray::RuntimeEnv")):
                    kind = "ray workers"  # trial actors (ray::ImplicitFunc...), idle pool workers (ray::IDLE)
                    workers.append(rss)
                else:
                    kind = "ray services"  # gcs_server, raylet, dashboard, monitor, log monitor, agents
                parts[kind] += rss
            total = sum(parts.values())
            self.samples += 1
            if full:
                self.peak_pss = max(self.peak_pss, pss)
            if total > self.peak["total"]:
                self.peak = {"total": total, "processes": n, "workers": sorted(workers, reverse=True), **parts}
            self.stop.wait(self.period)

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


class GpuSampler(threading.Thread):
    """nvidia-smi every 200 ms: (time, utilisation %, memory used MiB) of GPU 0."""

    def __init__(self):
        super().__init__(daemon=True)
        self.rows: List[tuple] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0", "-lms", "200"],
                                     stdout=subprocess.PIPE, text=True)

    def run(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(","))
            except ValueError:
                continue
            self.rows.append((time.time(), util, mem))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run_search_proc(a, space: Path, work: Path, name: str, ray_tmp: Path, *, period: float = 0.5,
                    sample_gpu: bool = False) -> Dict[str, Any]:
    timing = work / f"timing_{name}.txt"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # a Ray of its own: RAY_TMPDIR keeps it from joining a cluster another job started on this machine
    env.update({"PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), "FER_AUTOML_TIMING_FILE": str(timing)})
    cmd = [sys.executable, "-m", "runners.cli", "search", str(space), "--name", name,
           "--storage-path", str(work / "ray_results"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    gpu = GpuSampler() if sample_gpu else None
    if gpu:
        gpu.start()
    log_path = work / f"{name}.log"
    load = LoadSampler()
    load.start()
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        tree = TreeSampler(proc.pid, period)
        tree.start()
        try:
            rc = proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # this search's own process group: its driver and its Ray
            proc.wait()
            raise SystemExit(f"search {name} ran past {a.timeout} s; see {log_path}")
        wall = time.time() - t0
    tree.stop.set()
    tree.join()
    if gpu:
        gpu.close()
        gpu.join()
    if rc != 0:
        raise SystemExit(f"search {name} failed (exit {rc}); see {log_path}")
    # what one epoch's checkpoint holds (the last one Ray kept, without the final epoch's artifacts)
    ckpt_bytes = [sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                  for d in (work / "ray_results" / name).glob("*/checkpoint_*")]
    results = []
    for f in sorted((work / "ray_results" / name).glob("*/result.json")):
        results.append([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
    if not results:
        raise SystemExit(f"search {name}: no result.json under {work / 'ray_results' / name}")
    marks: Dict[str, float] = {}
    info: Dict[str, str] = {}
    rows = [line.split() for line in timing.read_text().splitlines()]  # time event pid [key=value ...]
    for t, event, _pid, *extra in rows:
        marks.setdefault(event, float(t) - t0)  # the first occurrence (the first trial)
        for kv in extra:
            k, _, v = kv.partition("=")
            info.setdefault(k, v)
    first_pid = next(pid for _t, event, pid, *_ in rows if event == "first_step")
    # the first trial's per-epoch marks: epoch_start, train_done, val_done, checkpoint_saved, reported
    per_epoch: Dict[str, List[float]] = {}
    for t, event, pid, *_ in rows:
        if pid == first_pid and event in EPOCH_MARKS:
            per_epoch.setdefault(event, []).append(float(t) - t0)
    starts = per_epoch.get("epoch_start", [])
    threads = int(info["torch_threads"]) if "torch_threads" in info else None
    out = {"wall_s": wall, "cpu_s": tree.cpu_seconds(), "load": load.mean(), "trials": results, "marks": marks,
           "threads": threads,
           "epoch_starts": starts, "epoch_marks": per_epoch, "ckpt_mb": max(ckpt_bytes) / 2**20 if ckpt_bytes else float("nan"), "t0": t0, "t_end": t0 + wall, "rss_peak": tree.peak, "pss_peak": tree.peak_pss,
           "samples": tree.samples}
    if gpu:
        out["gpu_rows"] = gpu.rows
    return out


# --- summaries ----------------------------------------------------------------------------------

def steady(n_epochs: int) -> List[int]:
    """0-based epochs measured: all but the first, which pays one-off costs (allocator, oneDNN
    primitives; in the platform also the trial's start-up)."""
    return list(range(1, n_epochs)) if n_epochs > 1 else [0]


def cycle_epochs(n_epochs: int) -> List[int]:
    """0-based epochs whose whole cycle is measured: 1 .. E-2. The first pays one-off costs
    (allocator, oneDNN primitives; in the platform also the trial's start-up: dropped as warm-up);
    the last has no next start to end its cycle (and the trial tests in it)."""
    return list(range(1, n_epochs - 1)) if n_epochs >= 3 else list(range(n_epochs - 1))


def cycles(starts: List[float]) -> List[float]:
    """Wall clock from the start of epoch k to the start of epoch k+1 for the epochs
    `cycle_epochs` names: the whole cycle (train, validate and, in a search, checkpoint, report and
    waiting for Tune to hand control back)."""
    return [starts[i + 1] - starts[i] for i in cycle_epochs(len(starts))]


def bare_rates(b: Dict[str, Any], n_epochs: int) -> Dict[str, float]:
    ep = b["epochs"]
    tr = [ep[i]["images"] / ep[i]["train_s"] for i in steady(n_epochs)]
    cyc = cycles([e["start"] for e in ep])
    train_s = [ep[i]["train_s"] for i in cycle_epochs(n_epochs)]
    total = sum(e["images"] for e in ep)
    n_train = ep[0]["images"]
    val_s = [ep[i]["val_s"] for i in cycle_epochs(n_epochs)]
    return {"train": statistics.mean(tr), "epoch": n_train / med(cyc) if cyc else float("nan"),
            "e2e": total / b["wall_s"], "cpu": total / b["cpu_s"], "n_train": n_train,
            "cycle_s": med(cyc), "train_s": med(train_s), "val_s": med(val_s), "ckpt_s": 0.0, "report_s": 0.0,
            "tail_s": med([c - t - v for c, t, v in zip(cyc, train_s, val_s)])}


def platform_rates(p: Dict[str, Any], n_epochs: int, n_train: int) -> Dict[str, float]:
    res = p["trials"][0]
    tr = [res[i]["images_per_second"] for i in steady(n_epochs)]
    cyc = cycles(p["epoch_starts"])
    ev = p["epoch_marks"]
    out = {"train": statistics.mean(tr), "epoch": n_train / med(cyc) if cyc else float("nan"),
           "e2e": n_train * n_epochs / p["wall_s"], "cpu": n_train * n_epochs / p["cpu_s"], "cycle_s": med(cyc)}
    for key, a, b, _label in PARTS:
        out[key] = med([(ev[b][i] if b else ev["epoch_start"][i + 1]) - ev[a][i] for i in cycle_epochs(n_epochs)])
    return out


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def spread(xs: List[float], fmt: str = "{:.1f}") -> str:
    return (fmt + "-" + fmt).format(min(xs), max(xs)) if len(xs) > 1 else fmt.format(xs[0])


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4, help="at least 3: epoch 1 is warm-up, the last has no next start")
    ap.add_argument("--n", type=int, default=1200, help="synthetic images (about 70%% are the train split)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--preset", default="baseline", help="fer_models preset (baseline = ResNet-18 + linear head)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--aug", type=float, default=0.5, help="data.aug_strength")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved bare/platform pairs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads = the trial's cpu resource")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpu-fraction", type=float, default=0.25, help="--device cuda: GPU per trial when sharing")
    ap.add_argument("--trials", type=int, default=4, help="--device cuda: trials sharing the GPU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "gpu"])
    ap.add_argument("--timeout", type=float, default=900, help="seconds one search may take")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, Ray results, mlflow.db)")
    ap.add_argument("--bare-json", help=argparse.SUPPRESS)
    ap.add_argument("--space", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bare_json:
        bare_main(a)
        return
    from fer_models.presets import PRESETS

    if a.epochs < 3:
        raise SystemExit("--epochs: at least 3 (epoch 1 is warm-up and the last has no next epoch start)")
    if a.preset not in PRESETS:
        raise SystemExit(f"--preset {a.preset!r}: valid: {', '.join(PRESETS)}")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
                             "the GPU variant needs a machine with an NVIDIA GPU and nvidia-smi")
        if shutil.which("nvidia-smi") is None:
            raise SystemExit("--device cuda: nvidia-smi is not on PATH (needed to sample GPU utilisation)")

    import torch

    work = Path(tempfile.mkdtemp(prefix="fer-overhead-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="fovh-", dir="/tmp"))  # short: Ray's socket paths live here
    gpu = 1.0 if a.device == "cuda" else 0.0
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores; torch {torch.__version__}; load average at start "
          f"{loadavg()}")
    print(f"workload: preset {a.preset}, {a.image_size} px, {a.n} synthetic images, batch {a.batch_size}, "
          f"{a.epochs} epochs, aug {a.aug}, {a.threads} torch thread(s) (trial cpu: {a.threads}), device {a.device}")
    print(f"work folder: {work}\n", flush=True)
    try:
        if "throughput" not in a.skip:
            throughput(a, work, ray_tmp, gpu)
        if "memory" not in a.skip:
            memory(a, work, ray_tmp)
        if a.device == "cuda" and "gpu" not in a.skip:
            gpu_sharing(a, work, ray_tmp)
        print(f"load average at end {loadavg()}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def throughput(a, work: Path, ray_tmp: Path, gpu: float) -> None:
    bares, plats = [], []
    for r in range(a.repeats):
        name = f"ovh{r}"
        space = write_space(work / f"{name}.yaml", a, name, trials=1, cpu=a.threads, gpu=gpu)
        b = run_bare(a, space, work, str(r), a.device)
        print(f"  repeat {r + 1}/{a.repeats} bare: {b['wall_s']:.1f} s, threads {b['threads']}, train img/s per epoch "
              + ", ".join(f"{e['images'] / e['train_s']:.1f}" for e in b["epochs"]) + ", epoch cycles s "
              + ", ".join(f"{c:.1f}" for c in cycles([e["start"] for e in b["epochs"]]))
              + f", CPU {b['cpu_s']:.0f} s  (mean load {b['load']:.1f})",
              flush=True)
        p = run_search_proc(a, space, work, name, ray_tmp)
        print(f"  repeat {r + 1}/{a.repeats} platform: {p['wall_s']:.1f} s, trial img/s per epoch "
              + ", ".join(f"{m['images_per_second']:.1f}" for m in p["trials"][0])
              + ", Ray time_this_iter_s " + ", ".join(f"{m['time_this_iter_s']:.1f}" for m in p["trials"][0])
              + ", epoch cycles s " + ", ".join(f"{c:.1f}" for c in cycles(p["epoch_starts"]))
              + f", threads {p['threads']}, first step at {p['marks'].get('first_step', float('nan')):.1f} s, CPU {p['cpu_s']:.0f} s"
              f"  (mean load {p['load']:.1f})", flush=True)
        bares.append(b)
        plats.append(p)
        if p["threads"] is not None and p["threads"] != b["threads"]:
            print(f"  WARNING: torch threads differ: bare {b['threads']}, trial {p['threads']}: not a fair pair",
                  flush=True)
    rb = [bare_rates(b, a.epochs) for b in bares]
    rp = [platform_rates(p, a.epochs, rb[i]["n_train"]) for i, p in enumerate(plats)]
    n_train = rb[0]["n_train"]
    ep_s = ", ".join(str(i + 1) for i in steady(a.epochs))
    ep_w = ", ".join(str(i + 1) for i in cycle_epochs(a.epochs))
    threads = sorted({b["threads"] for b in bares} | {p["threads"] for p in plats}, key=str)
    print(f"\n### Throughput ({n_train} training images per epoch; medians of {a.repeats} interleaved pairs, "
          f"min-max in brackets; torch threads, bare and trial: {', '.join(map(str, threads))})\n")
    print("| images/s | bare loop | platform | platform / bare |")
    print("|---|---:|---:|---:|")
    rows = [("epoch", f"**epoch cycle** (the requirement's figure: training images / wall clock from the start "
                      f"of epoch k to the start of k+1: train, validate and, in the platform, checkpoint + "
                      f"tune.report + MLflow), k = {ep_w}; epoch 1 (warm-up) dropped"),
            ("train", f"training loop only (trial's `images_per_second`), epochs {ep_s}"),
            ("e2e", "end to end (all training images / process wall clock, start-up included)"),
            ("cpu", "per CPU second, end to end (all training images / CPU seconds of the process and all "
                    "its descendants)")]
    for key, label in rows:
        xb, xp = [x[key] for x in rb], [x[key] for x in rp]
        ratios = [p_ / b_ for p_, b_ in zip(xp, xb)]
        print(f"| {label} | {med(xb):.1f} ({spread(xb)}) | {med(xp):.1f} ({spread(xp)}) | "
              f"**{med(ratios):.3f}** ({spread(ratios, '{:.3f}')}) |")
    print(f"\nWhere an epoch cycle's seconds go (each part: median over k = {ep_w}, then over the repeats; the "
          "platform's from the trial's marks; the bare loop has no checkpoint or report):\n")
    print("| seconds | bare loop | platform | platform - bare |")
    print("|---|---:|---:|---:|")
    for key, _a, _b, label in [("cycle_s", "", "", "**whole cycle**")] + PARTS:
        xb, xp = med([x[key] for x in rb]), med([x[key] for x in rp])
        print(f"| {label} | {xb:.2f} | {xp:.2f} | {xp - xb:+.2f} |")
    print(f"\nOne epoch's checkpoint (state.pt: model + optimizer + scheduler state; best_model.pt; config): "
          f"{med([p['ckpt_mb'] for p in plats]):.0f} MiB, written by the trial and then copied by tune.report "
          "into the storage path.")
    print(f"\nplatform / bare is the median of the per-pair ratios. Machine load (1-minute load average, mean "
          f"over each run; median): bare {med([b['load'] for b in bares]):.1f}, "
          f"platform {med([p['load'] for p in plats]):.1f}.")
    print(f"\n### Start-up: `fer-automl search` launch to the first training step (median of {a.repeats}, "
          "min-max)\n")
    print("| mark (seconds after launch) | median | min-max | step |")
    print("|---|---:|---:|---:|")
    prev = 0.0
    for key, label in MARKS:
        xs = [p["marks"][key] for p in plats if key in p["marks"]]
        if not xs:
            continue
        m = med(xs)
        print(f"| `{key}`: {label} | {m:.1f} | {spread(xs)} | +{m - prev:.1f} |")
        prev = m
    bf = [b["t_first_step"] - b["t_start"] for b in bares]
    print(f"\nbare loop for comparison: first step {med(bf):.1f} s after its `main` started "
          f"(process wall clock {med([b['wall_s'] for b in bares]):.1f} s in all); "
          f"search wall clock {med([p['wall_s'] for p in plats]):.1f} s in all.\n", flush=True)


def memory(a, work: Path, ray_tmp: Path) -> None:
    name = "ovhmem"
    gpu = a.gpu_fraction if a.device == "cuda" else 0.0
    space = write_space(work / f"{name}.yaml", a, name, trials=2, cpu=1, gpu=gpu)
    p = run_search_proc(a, space, work, name, ray_tmp, period=0.2)
    pk = p["rss_peak"]
    mib = 1024 * 1024
    print(f"### Memory: a search of 2 concurrent trials (cpu 1 each, max_concurrent 2), peak RSS summed over "
          f"the driver and every process under it ({p['samples']} samples, every 0.2 s; "
          f"{p['wall_s']:.0f} s)\n")
    print("| at the peak | RSS (MiB) |")
    print("|---|---:|")
    for k in ("driver", "ray services"):
        print(f"| {k} | {pk.get(k, 0) / mib:,.0f} |")
    each = " + ".join(f"{w / mib:,.0f}" for w in pk.get("workers", []))
    print(f"| ray workers ({each}) | {pk.get('ray workers', 0) / mib:,.0f} |")
    print(f"| **total** ({pk.get('processes', 0)} processes) | **{pk['total'] / mib:,.0f}** |")
    print(f"| peak of the summed PSS (every 2 s; shared pages split between the processes that share them) | "
          f"{p['pss_peak'] / mib:,.0f} |")
    print("\nRSS counts a shared page (libraries, the object store) once in every process that maps it: the RSS "
          "total is an upper bound, the PSS total what the search really holds.\n", flush=True)


def gpu_sharing(a, work: Path, ray_tmp: Path) -> None:
    name = "ovhgpu"
    space = write_space(work / f"{name}.yaml", a, name, trials=a.trials, cpu=a.threads, gpu=a.gpu_fraction)
    alone = run_bare(a, space, work, "gpu", "cuda")
    p = run_search_proc(a, space, work, name, ray_tmp, sample_gpu=True)
    rates = [statistics.mean(r[i]["images_per_second"] for i in steady(a.epochs)) for r in p["trials"]]
    first = p["t0"] + p["marks"].get("first_step", 0.0)
    rows = [r for r in p["gpu_rows"] if first <= r[0] <= p["t_end"]]
    util = [r[1] for r in rows] or [float("nan")]
    mem = [r[2] for r in p["gpu_rows"]] or [float("nan")]
    b = bare_rates(alone, a.epochs)
    print(f"### GPU: {a.trials} trials sharing one GPU ({a.gpu_fraction} GPU and {a.threads} CPU each)\n")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| one bare loop alone on the GPU, training img/s | {b['train']:.1f} |")
    print(f"| per trial, training img/s (median of {len(rates)}) | {med(rates):.1f} |")
    print(f"| all trials together, training img/s | {sum(rates):.1f} ({sum(rates) / b['train']:.2f}x one alone) |")
    print(f"| GPU utilisation from the first step to the end (nvidia-smi, mean / median, %) | "
          f"{statistics.mean(util):.0f} / {med(util):.0f} |")
    print(f"| peak GPU memory used (MiB) | {max(mem):,.0f} |")
    print(f"| search wall clock (s) | {p['wall_s']:.0f} |\n", flush=True)


if __name__ == "__main__":
    main()
