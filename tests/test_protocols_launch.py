"""``scripts/launch.py``: the protocol grids on a local pool of (fake) GPUs and through submitit.

1. ``--dry-run``: the grid is exactly what the drivers' ``DRY_RUN=1`` prints (XD and DG share their source run);
   with ``--slurm`` the sbatch script of each stage carries the resources of the flags.
2. The pool on ToyShapes: a failed run fails its dependent run and the exit status. (The pool's parallel grid,
   interrupted and launched again, against the sequential drivers: test_protocols_scripts.py, which has those runs.)
3. submitit's local executor: the job of a run is "preempted" (USR2, as SLURM signals it) mid-training, is requeued
   and its run resumes from its checkpoint.
"""
import json
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest

from test_protocols_scripts import LAUNCH, REPO, TINY_OPTS, dry_run, final_test, launch_env, run_script, wait_for


def launch(env, *args, timeout=300):
    return subprocess.run([sys.executable, LAUNCH, *args], env=launch_env(**env), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def commands(stdout):
    return [line for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------------------------------
# --dry-run
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["base2new", "few_shot", "cross_dataset", "domain_generalization"])
def test_dry_run_is_the_drivers_dry_run(tmp_path, protocol):
    env = {"OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "EXTRA_OPTS": "INPUT.SIZE (32,32)",
           "SEEDS": "1 2", "SHOTS_LIST": "1 16"}
    proc = launch(env, protocol, "OPTIM.MAX_EPOCH", "2", "--dry-run", "--gpus", "0")
    assert proc.returncode == 0, proc.stderr
    expected = run_script(f"reproduce_{protocol}.sh", {"DRY_RUN": "1", **env}, "OPTIM.MAX_EPOCH", "2")
    assert commands(proc.stdout) == expected.splitlines()  # the same text, line for line
    assert not (tmp_path / "out").exists()


def test_dry_run_shared_source_and_finished_runs(tmp_path):
    env = {"OUTPUT": str(tmp_path / "out"), "SEEDS": "1 2"}
    xd = dry_run("reproduce_cross_dataset.sh", tmp_path, SEEDS="1 2")
    dg = dry_run("reproduce_domain_generalization.sh", tmp_path, SEEDS="1 2")
    proc = launch(env, "cross_dataset,domain_generalization", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = commands(proc.stdout)
    assert len(lines) == len(xd) + len(dg) - 2 == 2 * (1 + 10 + 4)  # one ImageNet source run per seed
    assert "# 28 of these start only after" in proc.stdout
    # a finished run (its final test in results.json) is left out, as the drivers skip it
    target = tmp_path / "out" / "evaluation" / "HiCroPL" / "vit_b16_c2_ep5_batch32_2ctx_cross_datasets_16shots"
    (target / "dtd" / "seed1").mkdir(parents=True)
    (target / "dtd" / "seed1" / "results.json").write_text(json.dumps(
        {"evaluations": [{"split": "test", "accuracy": 50.0}]}))
    proc = launch(env, "cross_dataset", "--dry-run")
    assert len(commands(proc.stdout)) == 2 * (1 + 10) - 1 and "1 already finished" in proc.stdout


def test_slurm_dry_run_prints_sbatch_parameters(tmp_path):
    env = {"OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "SEEDS": "1", "DATASETS": "dtd eurosat"}
    proc = launch(env, "base2new", "--slurm", "--dry-run", "--partition", "gpu", "--time", "2-00:00:00",
                  "--gpus-per-job", "2", "--cpus", "6", "--mem", "48G", "--account", "lab", "--max-parallel", "1",
                  "--slurm-opt", "exclude=node7")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=2880", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=48G", "#SBATCH --account=lab",
                 "#SBATCH --exclude=node7", "#SBATCH --signal=USR2@90", "#SBATCH --array=0-1%1"):
        assert line in out, line
    # two stages: the training runs, then the novel tests (submitted when the first array has ended)
    assert "# stage 1/2: job array of 2 run(s)" in out and "# stage 2/2: job array of 2 run(s)" in out
    stage2 = out[out.index("# stage 2/2"):]
    expected = dry_run("reproduce_base2new.sh", tmp_path, SEEDS="1", DATASETS="dtd eurosat")
    assert [" ".join(c) for c in expected if "--eval-only" in c] == [
        line for line in stage2.splitlines() if line.startswith(sys.executable)]


def test_bad_arguments_one_line(tmp_path):
    for args, message in [(["nosuch"], "unknown protocol 'nosuch'"),
                          (["base2new", "--gpus", ""], "no GPUs found"),
                          (["few_shot", "--slurm", "--time", "soon"], "--time soon"),
                          (["base2new", "--per-gpu", "0", "--gpus", "0"], "--per-gpu must be at least 1")]:
        proc = launch({"OUTPUT": str(tmp_path), "DATASETS": "dtd", "SEEDS": "1"}, *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    proc = launch({"OUTPUT": str(tmp_path), "DATASETS": "nosuchset"}, "few_shot", "--gpus", "0")
    assert proc.returncode == 2 and "unknown dataset id 'nosuchset'" in proc.stderr  # the driver's own error
    # without the optional submitit: one line that says what to install
    hide = ("import runpy, sys; sys.modules['submitit'] = None; "
            f"sys.argv = [{LAUNCH!r}, 'base2new', '--slurm', '--dry-run']; "
            f"runpy.run_path({LAUNCH!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hide], env=launch_env(OUTPUT=str(tmp_path)), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == "error: --slurm needs the optional package submitit: " \
                                                   "pip install submitit\n"


# ---------------------------------------------------------------------------------------------------------------------
# The local pool on ToyShapes
# ---------------------------------------------------------------------------------------------------------------------


def test_pool_failed_run_blocks_its_dependent_and_exits_1(tmp_path):
    env = {"OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "EXTRA_OPTS": "NO_SUCH.KEY 1"}
    proc = launch(env, "base2new", "--gpus", "0,1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "summary: 0 done, 2 failed, 0 not run" in proc.stdout
    train_log = next((tmp_path / "out" / "launch_logs").glob("base2new__train_base__*.log"))
    assert "failed: base2new/train_base/" in proc.stdout and f"exit status 2; log: {train_log}" in proc.stdout
    assert "NO_SUCH.KEY" in train_log.read_text()  # train.py's one-line error is in the run's log
    assert "(not started: base2new/train_base/" in proc.stdout  # the novel test never ran
    assert not list((tmp_path / "out" / "launch_logs").glob("base2new__test_new__*.log"))


# ---------------------------------------------------------------------------------------------------------------------
# submitit: a preempted job is requeued and resumes
# ---------------------------------------------------------------------------------------------------------------------


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def descendants(pid):
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not osp.isdir("/proc/self/task"), reason="finds the job's process through /proc (Linux)")
def test_submitit_preempted_run_is_requeued_and_resumes(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    env = {"OUTPUT": str(out), "DATA": str(tmp_path / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "SHOTS_LIST": "2", "EXTRA_OPTS": TINY_OPTS + " OPTIM.MAX_EPOCH 4 TRAIN.CHECKPOINT_FREQ 1"}
    log = open(tmp_path / "launch.txt", "w")
    launcher = subprocess.Popen([sys.executable, LAUNCH, "few_shot", "--submitit-local"], env=launch_env(**env),
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    run_dir = out / "toy_shapes" / "HiCroPL" / "vit_b16_c2_ep50_batch32_16ctx_few_shot_2shots" / "seed1"
    started = []
    try:
        wait_for(lambda: (run_dir / "VLPromptLearner" / "model.pth.tar-1").exists(), 240, "the first checkpoint")
        started = descendants(launcher.pid)
        jobs = [p for p in started if "submitit.core._submit" in cmdline(p)]
        assert len(jobs) == 1
        os.kill(jobs[0], signal.SIGUSR2)  # what SLURM sends before preempting or at the time limit
        assert launcher.wait(300) == 0, (tmp_path / "launch.txt").read_text()
    finally:
        for pid in [launcher.pid, *started, *descendants(launcher.pid)]:  # submitit's controller outlives a launcher
            if cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
        log.close()
    assert "summary: 1 done, 0 failed" in (tmp_path / "launch.txt").read_text()
    job_logs = "".join(p.read_text() for p in (out / "launch_logs" / "submitit").glob("*_log.*"))
    assert "this job is preempted" in job_logs and "Requeued job" in job_logs
    run_log = (out / "launch_logs" / f"{osp.relpath(run_dir, out).replace('/', '__')}.log").read_text()
    assert run_log.count("==> ") == 2  # the command ran twice: before and after the requeue
    reruns = sorted(p for p in run_dir.iterdir() if p.name.startswith("log.txt-"))
    assert len(reruns) == 1 and "will resume training" in reruns[0].read_text()
    record = final_test(run_dir)
    assert record["checkpoint"].endswith("model-best.pth.tar")  # the test after the (resumed) training
