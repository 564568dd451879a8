"""Benchmark HiCroPL: train-step time, evaluation throughput and peak memory, optimised vs naive path.

    python scripts/benchmark.py                                        # random:ViT-B/16, 100 classes, batch 4, fp32
    python scripts/benchmark.py --classes 1000 --phases eval --eval-batch-size 16 --eval-images 160
    python scripts/benchmark.py --device cuda --prec fp16 amp bf16 fp32 --classes 100 1000 \\
        --batch-size 32 --eval-batch-size 500 --out bench.json
    python scripts/benchmark.py --phases epoch --epochs 3 --epoch-steps 2 --eval-images 48   # the evaluation cache

What is measured, per (class count, precision, path):
  train  one optimisation step as ``HiCroPL.forward_backward`` does it: forward (prompt learner, text tower over all
         classes, prompted and teacher image towers, loss), backward, optimizer step. Median over ``--repeats``
         steps after ``--warmup`` steps (the minimum is reported too: on a shared machine it is the least
         disturbed).
  eval   one full evaluation of N images (``--eval-images``) in batches of ``--eval-batch-size``: eval mode, no
         grad, logits of every batch, including the once-per-evaluation prompt-learner and text pass. Reported as
         images/s (median over ``--repeats`` evaluations, after a one-batch warm-up). Without the evaluation
         feature cache: every evaluation runs the teacher (the cache's gain is measured by ``epoch``).
  epoch  a realistic epoch, ``--epochs`` times: ``--epoch-steps`` training steps, then one evaluation of N images
         (``--eval-images``), as a training run with validation every epoch does. The optimised path runs it
         with and without the evaluation feature cache (``TRAINER.HICROPL.CACHE_EVAL_FEATURES``: the frozen
         teacher's features of the evaluation set are computed by the first evaluation and reused by later ones),
         alternating the two epoch by epoch on the same model so that both see the same machine load; the naive
         path runs it uncached (the released code has no cache). Reported: seconds per epoch, its training and
         evaluation parts, and the medians over epochs 2.. (epoch 1 fills the cache). Not in the default phases.
  memory peak resident memory of the process (CPU, read from /proc/self/status VmHWM) or
         ``torch.cuda.max_memory_allocated`` (CUDA), model weights included. On CPU every measurement runs in a
         fresh child process (a process's peak RSS cannot be reset); on CUDA all run in this process, the peak
         counter reset before each phase (``--isolate``: one child process per path there too).
Paths:
  optimised  the library's defaults: the text tower stops at the longest EOT token and (on CPU) computes the prompt
             prefix shared by all class texts once, the text side runs once per evaluation, the frozen teacher is
             the backbone's own visual tower.
  naive      the released code's work: all 77 text positions for every class (``CLIP.truncate_text = False``,
             ``CLIP.share_text_prefix = False``), the text side per batch (``CustomCLIP.cache_eval_text =
             False``), a second frozen CLIP as the teacher.
Both paths compute the same logits. The naive evaluation does the same work for every batch, so its images/s does
not depend on N: ``--naive-eval-images`` may be smaller than ``--eval-images`` to save time.

Inputs are synthetic: random images, class names "class 0" .. "class n-1" and random unit rows as the frozen
description features W; no dataset or weights download is needed with a ``random:<arch>`` backbone. Prompt
settings come from ``--config`` (default: the base-to-novel config, N_CTX 16, depth 12, k 6). The JSON result goes
to stdout and, atomically, to ``--out`` (rewritten after every measurement, so a cut-off run keeps what it
measured); progress goes to stderr.
"""
import argparse
import gc
import json
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PATHS = ("optimised", "naive")
PHASES = ("train", "eval", "epoch")
DEFAULT_PHASES = ("train", "eval")
DEFAULT_CONFIG = osp.join(REPO, "configs", "trainers", "HiCroPL", "vit_b16_c2_ep50_batch32_16ctx.yaml")


def log(message: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Child process: one measurement
# ---------------------------------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def build(job: Dict[str, Any]):
    """(model, optimizer, grad scaler or None, device) for one job: a CustomCLIP on synthetic classes."""
    import clip
    from dassl.optim import build_optimizer
    from dassl.config import get_cfg_default
    from train import extend_cfg
    from trainers.hicropl import CustomCLIP, check_hicropl_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(job["config"])
    cfg.TRAINER.HICROPL.PREC = job["prec"]
    cfg.TRAINER.HICROPL.MAPPER_MODE = job["mapper_mode"]
    if job["text_checkpointing"]:
        cfg.TRAINER.HICROPL.TEXT_CHECKPOINTING = True
    device = torch.device(job["device"])
    check_hicropl_cfg(cfg.TRAINER.HICROPL, device=device)
    naive = job["path"] == "naive"

    torch.manual_seed(0)
    clip_model, _ = clip.load(job["backbone"], device=device)
    classnames = [f"class {i}" for i in range(job["classes"])]
    frozen_text = F.normalize(torch.randn(job["classes"], clip_model.embed_dim, device=device), dim=-1)
    teacher = clip.load(job["backbone"], device=device)[0] if naive else None
    model = CustomCLIP(cfg, classnames, clip_model, frozen_text, teacher).to(device)
    if naive:
        clip_model.truncate_text = False
        clip_model.share_text_prefix = False
        model.cache_eval_text = False
    optim = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.OPTIM)
    scaler = torch.amp.GradScaler(device.type) if model.precision.grad_scaler else None
    return model, optim, scaler, device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_batch(job: Dict[str, Any], model, device: torch.device):
    """A fixed synthetic training batch: images (B, 3, R, R), labels (B,)."""
    resolution = model.clip_model.visual.input_resolution
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(job["batch_size"], 3, resolution, resolution, generator=generator).to(device)
    label = torch.randint(0, job["classes"], (job["batch_size"],), generator=generator).to(device)
    return image, label


def train_step(model, optim, scaler, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One optimisation step as ``HiCroPL.forward_backward`` does it; returns the loss."""
    model.train()
    loss = model(image, label)
    optim.zero_grad()
    if scaler is None:
        loss.backward()
        optim.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
    return loss


def measure_train(job: Dict[str, Any], model, optim, scaler, device: torch.device) -> Dict[str, Any]:
    """Median time of one optimisation step (the work of ``HiCroPL.forward_backward``)."""
    image, label = train_batch(job, model, device)
    times = []
    for step in range(job["warmup"] + job["repeats"]):
        synchronize(device)
        start = time.perf_counter()
        loss = train_step(model, optim, scaler, image, label)
        synchronize(device)
        elapsed = time.perf_counter() - start
        if step >= job["warmup"]:
            times.append(elapsed)
        log(f"  train step {step + 1}/{job['warmup'] + job['repeats']}: {elapsed:.3f} s"
            + (" (warm-up)" if step < job["warmup"] else ""))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()}")
    return {"batch_size": job["batch_size"], "step_s": times, "step_s_median": statistics.median(times),
            "step_s_min": min(times)}


@torch.no_grad()
def evaluate_once(model, images: torch.Tensor, n_images: int, table=None) -> None:
    """One evaluation of n_images (the batch tensor repeated, the last batch cut short), as ``SimpleTrainer.test``.

    ``table``: a ``FeatureTable`` of the n images (what ``HiCroPL.test`` puts in the model), None: no cache."""
    model.eval()  # (re)entering eval mode drops the cached text side: every evaluation pays for it once
    model.eval_features = table
    done = 0
    while done < n_images:
        batch = images[: n_images - done]
        index = torch.arange(done, done + batch.shape[0], device=batch.device)
        model(batch, index=index).argmax(dim=1)
        done += batch.shape[0]
    model.eval_features = None


def measure_eval(job: Dict[str, Any], model, device: torch.device) -> Dict[str, Any]:
    """Median images/s over full evaluations of ``eval_images`` images."""
    resolution = model.clip_model.visual.input_resolution
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(job["eval_batch_size"], 3, resolution, resolution, generator=generator).to(device)
    n_images = job["eval_images"]
    evaluate_once(model, images, images.shape[0])  # warm-up: one batch
    synchronize(device)
    times = []
    for repeat in range(job["repeats"]):
        start = time.perf_counter()
        evaluate_once(model, images, n_images)
        synchronize(device)
        times.append(time.perf_counter() - start)
        log(f"  evaluation {repeat + 1}/{job['repeats']}: {n_images} images in {times[-1]:.2f} s "
            f"({n_images / times[-1]:.2f} images/s)")
    median = statistics.median(times)
    return {"images": n_images, "batch_size": job["eval_batch_size"], "eval_s": times, "eval_s_median": median,
            "images_per_s": n_images / median, "images_per_s_best": n_images / min(times)}


def measure_epochs(job: Dict[str, Any], model, optim, scaler, device: torch.device) -> Dict[str, Any]:
    """``epochs`` x (``epoch_steps`` training steps + one evaluation of ``eval_images``), uncached and cached."""
    from trainers.feature_cache import FeatureTable

    image, label = train_batch(job, model, device)
    resolution = model.clip_model.visual.input_resolution
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(job["eval_batch_size"], 3, resolution, resolution, generator=generator).to(device)
    n_images = job["epoch_eval_images"]  # the same for both paths (not --naive-eval-images): epochs are compared
    train_step(model, optim, scaler, image, label)  # warm-up: one step and one batch, untimed
    evaluate_once(model, images, images.shape[0])
    modes = {"uncached": None}
    if job["path"] == "optimised":
        modes["cached"] = FeatureTable("benchmark", n_images, model.clip_model.embed_dim)
    runs: Dict[str, Dict[str, List[float]]] = {mode: {"train_s": [], "eval_s": [], "epoch_s": []} for mode in modes}
    for epoch in range(job["epochs"]):
        for mode, table in modes.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(job["epoch_steps"]):
                train_step(model, optim, scaler, image, label)
            synchronize(device)
            trained = time.perf_counter()
            evaluate_once(model, images, n_images, table)
            synchronize(device)
            end = time.perf_counter()
            run = runs[mode]
            run["train_s"].append(trained - start)
            run["eval_s"].append(end - trained)
            run["epoch_s"].append(end - start)
            log(f"  epoch {epoch + 1}/{job['epochs']} {mode}: {job['epoch_steps']} steps {trained - start:.2f} s + "
                f"evaluation of {n_images} images {end - trained:.2f} s")
    for run in runs.values():
        later = slice(1, None) if job["epochs"] > 1 else slice(None)  # epoch 1 fills the cache
        for part in ("train_s", "eval_s", "epoch_s"):
            run[f"{part}_median_later"] = statistics.median(run[part][later])
    return {"epochs": job["epochs"], "epoch_steps": job["epoch_steps"], "images": n_images,
            "batch_size": job["batch_size"], "eval_batch_size": job["eval_batch_size"], **runs}


def run_child(job: Dict[str, Any]) -> Dict[str, Any]:
    """Build the model and run the job's phases; returns {phase: result} with peak memory per phase."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    model, optim, scaler, device = build(job)
    results: Dict[str, Any] = {}
    for phase in job["phases"]:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        load_before = load_average()
        if phase == "train":
            result = measure_train(job, model, optim, scaler, device)
            # What training leaves behind (gradients, optimizer state) is no part of an evaluation's memory.
            optim.state.clear()
            model.zero_grad(set_to_none=True)
        elif phase == "eval":
            result = measure_eval(job, model, device)
        else:
            result = measure_epochs(job, model, optim, scaler, device)
        if device.type == "cuda":
            result.update(peak_memory_bytes=torch.cuda.max_memory_allocated(device), memory="cuda_max_allocated")
        else:
            result.update(peak_memory_bytes=peak_rss_bytes(), memory="cpu_peak_rss")
        result.update(load_average_before=load_before, load_average_after=load_average())
        results[phase] = result
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Parent: plan, spawn children, collect, write JSON
# ---------------------------------------------------------------------------------------------------------------------


def run_here(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run one job in this process (CUDA); everything it allocated is released before the next one."""
    try:
        result = run_child(job)
    except Exception as e:  # e.g. CUDA out of memory: reported, the other measurements go on
        result = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def spawn(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run one job in a fresh Python process; its JSON result is the last line of its stdout."""
    proc = subprocess.run(
        [sys.executable, osp.abspath(__file__), "--child", json.dumps(job)],
        stdout=subprocess.PIPE, stderr=None, text=True, cwd=REPO,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:  # killed (e.g. out of host memory) or crashed
        return {"error": f"measurement process exited with status {proc.returncode} (see stderr above)"}
    return json.loads(lines[-1])


def environment(device: str) -> Dict[str, Any]:
    env: Dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
        env["cpu"] = match.group(1).strip() if match else platform.processor()
    except OSError:
        env["cpu"] = platform.processor()
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = None
    return env


def ratios(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (classes, prec): naive/optimised step time, optimised/naive images/s, optimised/naive peak memory."""
    out = []
    keyed = {(r["classes"], r["prec"], r["path"]): r for r in results}
    for (classes, prec, path), opt in keyed.items():
        naive = keyed.get((classes, prec, "naive"))
        if path != "optimised" or naive is None:
            continue
        entry: Dict[str, Any] = {"classes": classes, "prec": prec}
        if "step_s_median" in opt.get("train", {}) and "step_s_median" in naive.get("train", {}):
            entry["train_speedup"] = naive["train"]["step_s_median"] / opt["train"]["step_s_median"]
            entry["train_memory_ratio"] = opt["train"]["peak_memory_bytes"] / naive["train"]["peak_memory_bytes"]
        if "images_per_s" in opt.get("eval", {}) and "images_per_s" in naive.get("eval", {}):
            entry["eval_speedup"] = opt["eval"]["images_per_s"] / naive["eval"]["images_per_s"]
            entry["eval_memory_ratio"] = opt["eval"]["peak_memory_bytes"] / naive["eval"]["peak_memory_bytes"]
        out.append(entry)
    for (classes, prec, path), opt in keyed.items():
        epoch = opt.get("epoch", {})
        if path != "optimised" or "cached" not in epoch:
            continue
        cached, uncached = epoch["cached"], epoch["uncached"]
        entry = next((e for e in out if (e["classes"], e["prec"]) == (classes, prec)), None)
        if entry is None:
            entry = {"classes": classes, "prec": prec}
            out.append(entry)
        # Epochs 2.. (the cache is filled by epoch 1): the gain of every evaluation after the first.
        entry["repeat_eval_cache_speedup"] = uncached["eval_s_median_later"] / cached["eval_s_median_later"]
        entry["epoch_cache_speedup"] = uncached["epoch_s_median_later"] / cached["epoch_s_median_later"]
        naive_epoch = keyed.get((classes, prec, "naive"), {}).get("epoch", {}).get("uncached")
        if naive_epoch is not None:
            entry["epoch_speedup_vs_naive"] = naive_epoch["epoch_s_median_later"] / cached["epoch_s_median_later"]
    return out


def write_json(report: Dict[str, Any], path: str) -> None:
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".benchmark.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backbone", default="random:ViT-B/16", help="clip.load spec (default random:ViT-B/16)")
    parser.add_argument("--classes", type=int, nargs="+", default=[100], help="class counts (default 100)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (default 4)")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="evaluation batch (default 16)")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="images per evaluation (default 10 evaluation batches)")
    parser.add_argument("--naive-eval-images", type=int, default=None,
                        help="images per evaluation of the naive path (default --eval-images)")
    parser.add_argument("--prec", nargs="+", default=["fp32"], choices=["fp16", "fp32", "amp", "bf16"],
                        help="TRAINER.HICROPL.PREC values (default fp32; fp16/amp need CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:i] (default cuda when available)")
    parser.add_argument("--mapper-mode", default="released", choices=["released", "differentiable"])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="trainer yaml for the prompt settings")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--phases", nargs="+", default=list(DEFAULT_PHASES), choices=PHASES,
                        help="default: train eval (epoch is opt-in)")
    parser.add_argument("--epochs", type=int, default=3, help="epoch phase: epochs per mode (default 3)")
    parser.add_argument("--epoch-steps", type=int, default=2, help="epoch phase: training steps per epoch (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps / evaluations (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--text-checkpointing", action="store_true",
                        help="TRAINER.HICROPL.TEXT_CHECKPOINTING True (activation checkpointing of the text tower)")
    parser.add_argument("--isolate", action="store_true",
                        help="CUDA: one child process per path (default: all in this process; CPU always isolates)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        try:
            result = run_child(json.loads(args.child))
        except Exception as e:  # reported in the JSON (e.g. CUDA out of memory); the other measurements go on
            result = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
        print(json.dumps(result))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available; use --device cpu")
    if min(args.classes + [args.batch_size, args.eval_batch_size, args.repeats, args.epochs, args.epoch_steps]) < 1:
        sys.exit("error: --classes, --batch-size, --eval-batch-size, --repeats, --epochs and --epoch-steps "
                 "must be >= 1")
    eval_images = args.eval_images or 10 * args.eval_batch_size
    naive_eval_images = args.naive_eval_images or eval_images
    # CPU: one process per phase, so that each peak RSS is that phase's alone. CUDA: the peak can be reset.
    cuda = args.device.startswith("cuda")
    phase_groups = [list(args.phases)] if cuda else [[p] for p in args.phases]
    isolate = args.isolate or not cuda

    report: Dict[str, Any] = {
        "schema": 1,
        "environment": environment(args.device),
        "settings": {
            "backbone": args.backbone, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
            "eval_images": eval_images, "naive_eval_images": naive_eval_images, "mapper_mode": args.mapper_mode,
            "config": osp.relpath(args.config, REPO), "warmup": args.warmup, "repeats": args.repeats,
            "text_checkpointing": args.text_checkpointing, "threads": args.threads or torch.get_num_threads(),
            "isolated_processes": isolate, "epochs": args.epochs, "epoch_steps": args.epoch_steps,
        },
        "load_average_start": load_average(),
        "results": [],
        "ratios": [],
    }
    for classes in args.classes:
        for prec in args.prec:
            for path in args.paths:
                entry: Dict[str, Any] = {"classes": classes, "prec": prec, "path": path}
                for phases in phase_groups:
                    job = {
                        "backbone": args.backbone, "classes": classes, "prec": prec, "path": path, "phases": phases,
                        "device": args.device, "mapper_mode": args.mapper_mode, "config": args.config,
                        "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                        "eval_images": naive_eval_images if path == "naive" else eval_images,
                        "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                        "text_checkpointing": args.text_checkpointing, "epochs": args.epochs,
                        "epoch_steps": args.epoch_steps, "epoch_eval_images": eval_images,
                    }
                    log(f"{classes} classes, {prec}, {path}: {' + '.join(phases)} (load average {load_average()})")
                    result = spawn(job) if isolate else run_here(job)
                    if "error" in result:
                        entry.setdefault("errors", {}).update({phase: result["error"] for phase in phases})
                        log(f"  failed: {result['error']}")
                    else:
                        entry.update(result)
                report["results"].append(entry)
                report["ratios"] = ratios(report["results"])
                report["load_average_end"] = load_average()
                if args.out:
                    write_json(report, args.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
