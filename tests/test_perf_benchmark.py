"""scripts/benchmark.py end to end on random:tiny, all three phases (functional: fields, counts and consistency; no
timing claims)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark.py"


def run_benchmark(tmp_path, *extra):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--backbone", "random:tiny", "--classes", "5", "--batch-size", "2",
         "--eval-batch-size", "2", "--eval-images", "5", "--naive-eval-images", "3", "--warmup", "1", "--repeats", "2",
         "--threads", "1", "--config", str(REPO / "configs/trainers/HiCroPL/demo_tiny.yaml"), "--device", "cpu",
         "--out", str(out), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    proc, out = run_benchmark(tmp_path, "--phases", "train", "eval", "epoch", "--epochs", "2", "--epoch-steps", "1")
    data = json.loads(out.read_text())
    assert json.loads(proc.stdout) == data  # stdout carries the same JSON
    return data, proc.stderr


def test_json_has_both_paths_both_phases_and_the_settings(report):
    data, _ = report
    assert data["schema"] == 1
    settings = data["settings"]
    assert settings["backbone"] == "random:tiny" and settings["batch_size"] == 2 and settings["eval_images"] == 5
    assert settings["naive_eval_images"] == 3 and settings["mapper_mode"] == "released"
    for key in ("torch", "cpu", "device", "git_commit", "cpu_threads"):
        assert key in data["environment"]
    assert len(data["load_average_start"]) == 3
    assert [(r["classes"], r["prec"], r["path"]) for r in data["results"]] == [
        (5, "fp32", "optimised"), (5, "fp32", "naive")]
    for entry in data["results"]:
        assert "errors" not in entry
        train, evaluation = entry["train"], entry["eval"]
        assert len(train["step_s"]) == 2 and train["step_s_median"] > 0
        assert sorted(train["step_s"])[0] <= train["step_s_median"] <= sorted(train["step_s"])[-1]
        assert evaluation["images"] == (5 if entry["path"] == "optimised" else 3)
        assert evaluation["images_per_s"] == pytest.approx(evaluation["images"] / evaluation["eval_s_median"])
        for phase in (train, evaluation):
            assert phase["memory"] == "cpu_peak_rss"
            assert 50e6 < phase["peak_memory_bytes"] < 20e9  # a whole python + torch process
            assert len(phase["load_average_before"]) == 3


def test_ratios_are_computed_from_the_two_paths(report):
    data, _ = report
    optimised, naive = data["results"]
    (ratio,) = data["ratios"]
    assert ratio["classes"] == 5 and ratio["prec"] == "fp32"
    assert ratio["train_speedup"] == pytest.approx(naive["train"]["step_s_median"] / optimised["train"]["step_s_median"])
    assert ratio["eval_speedup"] == pytest.approx(optimised["eval"]["images_per_s"] / naive["eval"]["images_per_s"])
    assert ratio["train_memory_ratio"] == pytest.approx(
        optimised["train"]["peak_memory_bytes"] / naive["train"]["peak_memory_bytes"])


def test_progress_goes_to_stderr_and_warmup_is_not_timed(report):
    _, stderr = report
    assert "train step 1/3" in stderr and "(warm-up)" in stderr and "evaluation 2/2" in stderr


def test_bad_precision_for_the_device_fails_the_measurement_not_the_run(tmp_path):
    proc, out = run_benchmark(tmp_path, "--prec", "amp", "--paths", "optimised", "--phases", "train")
    (entry,) = json.loads(out.read_text())["results"]
    assert "needs a CUDA device" in proc.stderr and set(entry["errors"]) == {"train"}


def test_epoch_phase_times_cached_and_uncached_epochs_and_their_ratios(report):
    data, _ = report
    optimised, naive = data["results"]
    assert set(optimised["epoch"]) >= {"cached", "uncached"} and "cached" not in naive["epoch"]
    for entry in (optimised, naive):
        epoch = entry["epoch"]
        assert epoch["epochs"] == 2 and epoch["epoch_steps"] == 1 and epoch["images"] == 5  # not --naive-eval-images
    for run in (optimised["epoch"]["cached"], optimised["epoch"]["uncached"], naive["epoch"]["uncached"]):
        assert len(run["epoch_s"]) == 2
        for i in range(2):
            assert run["epoch_s"][i] == pytest.approx(run["train_s"][i] + run["eval_s"][i])
        assert run["epoch_s_median_later"] == run["epoch_s"][1]  # epoch 1 (filling the cache) left out
    (ratio,) = data["ratios"]
    cached, uncached = optimised["epoch"]["cached"], optimised["epoch"]["uncached"]
    assert ratio["repeat_eval_cache_speedup"] == pytest.approx(uncached["eval_s"][1] / cached["eval_s"][1])
    assert ratio["epoch_cache_speedup"] == pytest.approx(uncached["epoch_s"][1] / cached["epoch_s"][1])
    naive_epoch = naive["epoch"]["uncached"]["epoch_s"][1]
    assert ratio["epoch_speedup_vs_naive"] == pytest.approx(naive_epoch / cached["epoch_s"][1])
