"""Run a protocol grid of ``scripts/hicropl/`` on a local GPU pool or a SLURM cluster (submitit).

Usage::

    # local pool: one run per GPU (CUDA_VISIBLE_DEVICES per run), --per-gpu N runs per GPU
    python scripts/launch.py base2new --gpus 0,1,2,3 [--per-gpu 1] [--log-dir DIR] [--dry-run]

    # SLURM: one job array per stage, resources per run from the flags; needs the optional package submitit
    python scripts/launch.py few_shot --slurm --partition gpu --time 12:00:00 [--gpus-per-job 1] [--cpus 8]
                             [--mem 64G] [--account A] [--qos Q] [--constraint C] [--max-parallel N]
                             [--slurm-opt KEY=VALUE ...] [--dry-run]

PROTOCOL: ``base2new``, ``few_shot``, ``cross_dataset``, ``domain_generalization`` (the ``reproduce_<name>.sh``
drivers), ``ablation`` when ``scripts/hicropl/ablation.sh`` exists (its TABLE is the first ARG); several joined by
commas (``cross_dataset,domain_generalization``: the shared ImageNet source runs once). ARGs after the protocol go to
the driver (``KEY VALUE`` config overrides). The drivers' environment variables (DATASETS, SEEDS, SHOTS_LIST, SOURCE,
DATA, OUTPUT, EXTRA_OPTS, CFG, ...) work as for the drivers; PYTHON defaults to the interpreter running this script.

The grid is exactly what ``DRY_RUN=1`` of the driver prints (the driver is run to get it, so the two never drift):
runs whose results.json already holds their final result are left out, every other run is started with the same
command as the driver would use, and train.py resumes a partial run from the last checkpoint in its output dir.
An eval run whose ``--model-dir`` is the ``--output-dir`` of a run of the grid (a base-to-novel novel test, a
cross-dataset / DG target) starts only after that run has finished successfully. Output dirs and results are those
of the drivers, so ``scripts/parse_results.py`` reads them as usual.

Local pool: a one-screen table (queued / running / done / failed, elapsed, ETA) redrawn in place on a terminal, one
line per event otherwise; the output of each run (train.py's stdout and stderr) is appended to
``<log dir>/<output dir relative to OUTPUT, "/" -> "__">.log`` (default log dir ``$OUTPUT/launch_logs``). Ctrl-C
(or SIGTERM) interrupts the running train.py processes (they stop at once and resume when the grid is launched
again); a second Ctrl-C kills them. If the launcher itself is killed, its runs get SIGINT from the kernel (Linux).

SLURM (submitit): the runs are grouped in stages (stage 2 = runs that need a run of stage 1); each stage is one job
array, submitted when the previous stage has ended, so keep the launcher alive (tmux/screen) until it prints its
summary. A job that is preempted or reaches its time limit is requeued by submitit (``--signal USR2@90``) and its run
resumes from its last checkpoint. ``--dry-run`` prints the sbatch script of each stage and the commands.
``--submitit-local`` runs the same submitit code path with submitit's local executor (to try it on one machine).

Exit status: 0 when every run finished, 1 when a run failed (or was not started because the run it needs failed),
130 when interrupted, 2 with one ``error:`` line for bad arguments.
"""
import argparse
import ctypes
import os
import os.path as osp
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DRIVERS = osp.join(REPO, "scripts", "hicropl")
POLL_S = 0.5  # how often the pool looks at its children
STOP_GRACE_S = 60  # after Ctrl-C: how long runs get to exit before they are killed


class LaunchError(Exception):
    """Bad arguments or a driver that refuses them: one ``error:`` line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------------
# The grid: the commands of the driver's DRY_RUN mode
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One ``train.py`` command of the grid and its state in this launch."""

    line: str  # the command as DRY_RUN printed it (run from the repository root)
    argv: List[str]  # the same, split
    output_dir: str
    name: str  # output_dir relative to OUTPUT
    kind: str  # "train" or "eval" (an --eval-only run)
    model_dir: Optional[str]
    needs: List[int] = field(default_factory=list)  # indices of the runs that must finish first
    state: str = "queued"  # queued | running | done | failed
    reason: str = ""  # why a run failed
    slot: Optional[int] = None
    start: float = 0.0
    end: float = 0.0
    log: str = ""
    proc: Optional[subprocess.Popen] = None


def protocols() -> Dict[str, str]:
    """``{protocol name: driver script}``: the ``reproduce_<name>.sh`` drivers and ``ablation.sh`` if present."""
    found = {}
    for name in sorted(os.listdir(DRIVERS)):
        match = re.fullmatch(r"reproduce_(\w+)\.sh", name)
        if match:
            found[match.group(1)] = osp.join(DRIVERS, name)
    if osp.isfile(osp.join(DRIVERS, "ablation.sh")):
        found["ablation"] = osp.join(DRIVERS, "ablation.sh")
    return found


def output_root(env: Dict[str, str]) -> str:
    """OUTPUT as the drivers resolve it (common.sh): relative to the caller's cwd, default ``<repo>/output``."""
    return osp.abspath(env["OUTPUT"]) if env.get("OUTPUT") else osp.join(REPO, "output")


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    return argv[argv.index(name) + 1] if name in argv else None


def dry_run_lines(script: str, args: Sequence[str], env: Dict[str, str]) -> List[str]:
    """The stdout lines of ``DRY_RUN=1 bash script args`` (run from the caller's cwd, as a user would)."""
    proc = subprocess.run(["bash", script, *args], env={**env, "DRY_RUN": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        message = lines[-1] if lines else f"exit status {proc.returncode}"
        raise LaunchError(f"{osp.relpath(script, REPO)}: {message.removeprefix('error: ')}")
    return proc.stdout.splitlines()


def expand(names: Sequence[str], args: Sequence[str], env: Dict[str, str]) -> Tuple[List[Run], int]:
    """The runs of the protocols ``names`` still to do, with their dependencies, and how many are finished."""
    available = protocols()
    root = output_root(env)
    runs: List[Run] = []
    by_dir: Dict[str, int] = {}
    finished = set()
    for name in names:
        if name not in available:
            raise LaunchError(f"unknown protocol '{name}'; choose one of: {', '.join(available)}")
        for line in dry_run_lines(available[name], args, env):
            if line.startswith("skip (finished): "):
                finished.add(osp.normpath(line[len("skip (finished): "):]))
                continue
            if not line.strip():
                continue
            argv = shlex.split(line)
            out_dir = flag_value(argv, "--output-dir")
            if out_dir is None:
                raise LaunchError(f"{name}: a DRY_RUN line without --output-dir: {line}")
            key = osp.normpath(out_dir)
            if key in by_dir:
                if runs[by_dir[key]].argv != argv:
                    raise LaunchError(
                        f"two different commands write to {out_dir}:\n  {runs[by_dir[key]].line}\n  {line}")
                continue  # the same run in two protocols (the ImageNet source of XD and DG): once
            model_dir = flag_value(argv, "--model-dir")
            rel = osp.relpath(key, root)
            runs.append(Run(line=line, argv=argv, output_dir=key, name=key if rel.startswith("..") else rel,
                            kind="eval" if "--eval-only" in argv else "train",
                            model_dir=osp.normpath(model_dir) if model_dir else None))
            by_dir[key] = len(runs) - 1
    for run in runs:
        if run.model_dir in by_dir:
            run.needs.append(by_dir[run.model_dir])
    return runs, len(finished)


def stages(runs: Sequence[Run]) -> List[List[int]]:
    """Run indices grouped by dependency depth: stage 0 needs nothing of the grid, stage k needs stage k-1."""
    depth: Dict[int, int] = {}

    def depth_of(i: int) -> int:
        if i not in depth:
            depth[i] = 1 + max((depth_of(j) for j in runs[i].needs), default=-1)
        return depth[i]

    grouped: Dict[int, List[int]] = {}
    for i in range(len(runs)):
        grouped.setdefault(depth_of(i), []).append(i)
    return [grouped[k] for k in sorted(grouped)]


def run_finished(output_dir: str, kind: str) -> bool:
    """Whether the run's results.json holds its final result (the drivers' check: parse_results.py --finished)."""
    if not osp.isfile(osp.join(output_dir, "results.json")):
        return False
    check = [sys.executable, osp.join(REPO, "scripts", "parse_results.py"), "--finished", output_dir,
             "--run-kind", kind]
    return subprocess.run(check, capture_output=True).returncode == 0


def log_path(log_dir: str, run: Run) -> str:
    return osp.join(log_dir, run.name.strip("/").replace("/", "__") + ".log")


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------------------------------
# Local pool
# ---------------------------------------------------------------------------------------------------------------------


def _die_with_launcher() -> None:
    """In the child before exec: get SIGINT when the launcher dies, even by SIGKILL (Linux prctl; else nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Pool:
    """Runs the grid on ``slots`` (one device id per slot) and reports on ``out``."""

    def __init__(self, runs: List[Run], slots: List[str], log_dir: str, env: Dict[str, str], out: TextIO,
                 tty: bool, title: str) -> None:
        self.runs, self.slots, self.log_dir, self.env, self.out, self.tty = runs, slots, log_dir, env, out, tty
        self.title = title
        self.free = list(range(len(slots)))
        self.started = time.time()
        self.stop_requests = 0
        self.drawn_lines = 0

    # -- scheduling ----------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run every run; the exit status (0 all done, 1 a run failed, 130 interrupted)."""
        os.makedirs(self.log_dir, exist_ok=True)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stop_requests and any(r.state in ("queued", "running") for r in self.runs):
                self._reap()
                self._start_ready()
                self._draw()
                time.sleep(POLL_S)
            self._reap()
            if self.stop_requests:
                self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._draw(final=True)
        return self._summary()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1
        if self.stop_requests > 1:  # a second Ctrl-C: no more waiting
            self._signal_children(signal.SIGKILL)

    def _start_ready(self) -> None:
        for run in self.runs:
            if run.state != "queued":
                continue
            needs = [self.runs[j] for j in run.needs]
            if any(n.state == "failed" for n in needs):
                failed = next(n for n in needs if n.state == "failed")
                self._finish(run, "failed", f"not started: {failed.name} failed")
            elif all(n.state == "done" for n in needs) and self.free:
                if run_finished(run.output_dir, run.kind):  # by another launcher since the grid was expanded
                    self._finish(run, "done", "finished meanwhile, not run again")
                else:
                    self._launch(run, self.free.pop(0))

    def _launch(self, run: Run, slot: int) -> None:
        run.slot, run.start, run.state = slot, time.time(), "running"
        run.log = log_path(self.log_dir, run)
        device = self.slots[slot]
        with open(run.log, "a") as log:
            log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} CUDA_VISIBLE_DEVICES={device} {run.line}\n")
            log.flush()
            try:
                run.proc = subprocess.Popen(run.argv, cwd=REPO, env={**self.env, "CUDA_VISIBLE_DEVICES": device},
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_die_with_launcher)
            except OSError as e:  # e.g. PYTHON is not an executable
                log.write(f"error: cannot start {run.argv[0]}: {e}\n")
                self.free.append(slot)
                self._finish(run, "failed", f"cannot start {run.argv[0]}: {e.strerror}")
                return
        self._event(f"start  [gpu {device}] {run.name}")

    def _reap(self) -> None:
        for run in self.runs:
            if run.state == "running" and run.proc is not None and run.proc.poll() is not None:
                code = run.proc.returncode
                self.free.append(run.slot)
                self.free.sort()
                if code == 0:
                    self._finish(run, "done")
                else:
                    self._finish(run, "failed", f"exit status {code}; log: {run.log}")

    def _finish(self, run: Run, state: str, reason: str = "") -> None:
        run.state, run.reason, run.end = state, reason, time.time()
        run.proc = None
        took = f" after {fmt_time(run.end - run.start)}" if run.start else ""
        self._event(f"{state:6s} {run.name}{took}" + (f" ({reason})" if reason else ""))

    def _signal_children(self, sig: int) -> None:
        for run in self.runs:
            if run.proc is not None and run.proc.poll() is None:
                try:
                    os.killpg(run.proc.pid, sig)
                except ProcessLookupError:
                    pass

    def _stop_all(self) -> None:
        """Interrupt the running runs (SIGINT to their process groups), kill what is left after the grace time."""
        running = [r for r in self.runs if r.state == "running"]
        if running:
            self._event(f"interrupted: stopping {len(running)} running run(s)")
        self._signal_children(signal.SIGINT)
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and any(r.proc.poll() is None for r in running if r.proc is not None):
            time.sleep(0.1)
        self._signal_children(signal.SIGKILL)
        for run in running:
            if run.proc is not None and run.proc.wait() == 0:  # it ended on its own just before the signal
                self._reap()
            elif run.proc is not None:
                self.free.append(run.slot)
                run.state, run.reason, run.end, run.proc = "queued", "interrupted", time.time(), None

    # -- reporting -----------------------------------------------------------------------------------------------

    def counts(self) -> Dict[str, int]:
        counts = {state: 0 for state in ("queued", "running", "done", "failed")}
        for run in self.runs:
            counts[run.state] += 1
        return counts

    def eta(self) -> Optional[float]:
        """Seconds until the grid ends: mean duration of finished runs of the same kind, spread over the slots."""
        done = [r for r in self.runs if r.state == "done" and r.start]  # runs that ran here
        mean_all = sum(r.end - r.start for r in done) / len(done) if done else None
        left = 0.0
        for run in self.runs:
            if run.state not in ("queued", "running"):
                continue
            same = [r.end - r.start for r in done if r.kind == run.kind]
            estimate = sum(same) / len(same) if same else mean_all
            if estimate is None:
                return None
            left += max(estimate - (time.time() - run.start), 0.0) if run.state == "running" else estimate
        return left / len(self.slots)

    def status_line(self) -> str:
        c = self.counts()
        return (f"queued {c['queued']}  running {c['running']}  done {c['done']}  failed {c['failed']}  |  "
                f"elapsed {fmt_time(time.time() - self.started)}  ETA {fmt_time(self.eta())}")

    def _event(self, message: str) -> None:
        if not self.tty:
            print(f"[{fmt_time(time.time() - self.started)}] {message}  ({self.status_line()})", file=self.out,
                  flush=True)

    def _draw(self, final: bool = False) -> None:
        """The one-screen table, redrawn in place (terminals only)."""
        if not self.tty:
            return
        columns, rows = shutil.get_terminal_size()
        lines = [self.title, self.status_line(), ""]
        now = time.time()
        for run in sorted((r for r in self.runs if r.state == "running"), key=lambda r: r.slot):
            lines.append(f"  gpu {self.slots[run.slot]:<4} {fmt_time(now - run.start)}  {run.name}")
        lines += [f"  FAILED    {r.name} ({r.reason})" for r in self.runs if r.state == "failed"]
        queued = [r for r in self.runs if r.state == "queued"]
        if queued:
            lines.append(f"  next      {queued[0].name}" + (f" (+{len(queued) - 1} more)" if len(queued) > 1 else ""))
        room = max(rows - 2 - len(lines), 0)  # the most recently finished runs fill the rest of the screen
        done = sorted((r for r in self.runs if r.state == "done" and r.start), key=lambda r: -r.end)[:room]
        lines += [f"  done {fmt_time(r.end - r.start)}  {r.name}" for r in done]
        lines = [line[:columns - 1] for line in lines[:max(rows - 2, 3)]]
        up = f"\x1b[{self.drawn_lines}F" if self.drawn_lines else ""
        self.out.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn_lines = 0 if final else len(lines)

    def _summary(self) -> int:
        c = self.counts()
        interrupted = [r for r in self.runs if r.reason == "interrupted"]
        print(f"summary: {c['done']} done, {c['failed']} failed, {c['queued']} not run, "
              f"in {fmt_time(time.time() - self.started)}; logs in {self.log_dir}", file=self.out)
        for run in self.runs:
            if run.state == "failed":
                print(f"  failed: {run.name} ({run.reason})", file=self.out)
        if self.stop_requests:
            print(f"interrupted ({len(interrupted)} run(s) stopped): launch the same command again to resume",
                  file=self.out, flush=True)
            return 130
        self.out.flush()
        return 1 if c["failed"] else 0


def parse_gpus(value: Optional[str]) -> List[str]:
    """Device ids from ``--gpus``, else CUDA_VISIBLE_DEVICES, else the GPUs ``nvidia-smi -L`` lists."""
    if value is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None and shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        value = ",".join(str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU "))
    gpus = [g.strip() for g in (value or "").split(",") if g.strip()]
    if not gpus:
        raise LaunchError("no GPUs found: pass --gpus with the device ids to use, e.g. --gpus 0,1,2,3")
    return gpus


# ---------------------------------------------------------------------------------------------------------------------
# SLURM through submitit
# ---------------------------------------------------------------------------------------------------------------------


class SubmititRun:
    """What submitit runs for one run of the grid: its train.py command, output appended to ``log``.

    On preemption or time-out submitit calls ``checkpoint()`` in the job (signal USR2): it stops train.py and hands
    back the same command, which submitit requeues; train.py resumes from the last checkpoint in its output dir.
    """

    def __init__(self, argv: List[str], log: str, output_dir: str, kind: str) -> None:
        self.argv, self.log, self.output_dir, self.kind = argv, log, output_dir, kind
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self) -> Dict[str, object]:
        return {"argv": self.argv, "log": self.log, "output_dir": self.output_dir, "kind": self.kind}  # no process

    def __setstate__(self, state: Dict[str, object]) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> str:
        if run_finished(self.output_dir, self.kind):  # e.g. requeued after its final test was written
            return self.log
        with open(self.log, "a") as log:
            log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} job {os.environ.get('SLURM_JOB_ID', '-')} "
                      f"{shlex.join(self.argv)}\n")
            log.flush()
            self._proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
            code = self._proc.wait()
        if code != 0:
            raise RuntimeError(f"train.py exited with status {code}; log: {self.log}")
        return self.log

    def checkpoint(self) -> object:
        """Stop train.py and return the same run for submitit to requeue (called in the signal handler)."""
        import submitit

        if self._proc is not None:
            # Only os-level calls here: the handler interrupted __call__ inside Popen.wait(), which holds its lock.
            stop_process(self._proc.pid)
        return submitit.helpers.DelayedSubmission(SubmititRun(self.argv, self.log, self.output_dir, self.kind))


def stop_process(pid: int) -> None:
    """SIGINT to a child (train.py stops at once, its checkpoints are written atomically), SIGKILL after the grace
    time; returns once it has exited (reaped here)."""
    try:
        os.kill(pid, signal.SIGINT)
        deadline = time.time() + STOP_GRACE_S
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except (ProcessLookupError, ChildProcessError):
        pass  # already gone


def parse_time(value: str) -> int:
    """A SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", value)
    if not match:
        raise LaunchError(f"--time {value}: expected MINUTES, HH:MM:SS or D-HH:MM:SS")
    parts = [int(p) for p in match.group(2).split(":")]
    if match.group(1) is None:
        hours, minutes, seconds = parts if len(parts) == 3 else [0, *parts, 0][:3]
    else:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    total = int(match.group(1) or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise LaunchError(f"--time {value}: must be at least one minute")
    return total


def sbatch_parameters(args: argparse.Namespace, name: str) -> Dict[str, object]:
    """submitit's SLURM parameters (names of its sbatch script builder) from the flags."""
    params: Dict[str, object] = {"job_name": name, "time": parse_time(args.time), "nodes": 1,
                                 "ntasks_per_node": 1, "gpus_per_node": args.gpus_per_job,
                                 "cpus_per_task": args.cpus, "signal_delay_s": 90}
    for key in ("partition", "mem", "account", "qos", "constraint"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.max_parallel:
        params["array_parallelism"] = args.max_parallel
    extra = {}
    for item in args.slurm_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"--slurm-opt {item}: expected KEY=VALUE (an sbatch option without '--')")
        extra[key.replace("-", "_")] = value
    if extra:
        params["additional_parameters"] = extra
    return params


def import_submitit() -> object:
    try:
        import submitit
    except ImportError:
        raise LaunchError("--slurm needs the optional package submitit: pip install submitit") from None
    return submitit


def wait_jobs(runs: List[Run], pending: Dict[int, object], started: float, poll_s: float, out: TextIO) -> None:
    """Wait for the submitit jobs ``{run index: job}``; mark each run done or failed as its job ends."""
    while pending:
        for i, job in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            try:
                job.result()
                runs[i].state = "done"
            except Exception as e:  # the job's error (train.py's exit status and log) or submitit's
                runs[i].state, runs[i].reason = "failed", str(e).strip().splitlines()[-1]
            print(f"[{fmt_time(time.time() - started)}] {runs[i].state:6s} {runs[i].name}"
                  + (f" ({runs[i].reason})" if runs[i].reason else ""), file=out, flush=True)
        time.sleep(poll_s)


def run_submitit(runs: List[Run], args: argparse.Namespace, log_dir: str, name: str, out: TextIO) -> int:
    """Submit the grid stage by stage (one job array each) and wait; the exit status as for the pool."""
    submitit = import_submitit()
    params = sbatch_parameters(args, name)
    folder = osp.join(log_dir, "submitit")
    groups = stages(runs)
    if args.dry_run:
        from submitit.slurm.slurm import _make_sbatch_string

        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
        for k, group in enumerate(groups, 1):
            when = f", submitted when stage {k - 1} has ended" if k > 1 else ""
            print(f"# stage {k}/{len(groups)}: job array of {len(group)} run(s){when}", file=out)
            print(_make_sbatch_string(command=command, folder=folder, map_count=len(group), **params), file=out)
            for i in group:
                print(runs[i].line, file=out)
        return 0
    os.makedirs(log_dir, exist_ok=True)
    if args.submitit_local:
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=params["time"])
    else:
        executor = submitit.SlurmExecutor(folder)
        executor.update_parameters(**params)
    started = time.time()
    for k, group in enumerate(groups, 1):
        todo = []
        for i in group:
            missing = [runs[j].name for j in runs[i].needs if runs[j].state != "done"]
            if missing:
                runs[i].state, runs[i].reason = "failed", f"not started: {missing[0]} failed"
                print(f"failed {runs[i].name} ({runs[i].reason})", file=out, flush=True)
            else:
                todo.append(i)
        if not todo:
            continue
        with executor.batch():
            jobs = [executor.submit(SubmititRun(runs[i].argv, log_path(log_dir, runs[i]), runs[i].output_dir,
                                                runs[i].kind)) for i in todo]
        for i in todo:
            runs[i].state, runs[i].log = "running", log_path(log_dir, runs[i])
        print(f"stage {k}/{len(groups)}: submitted {len(jobs)} run(s), job {jobs[0].job_id.split('_')[0]}",
              file=out, flush=True)
        pending = dict(zip(todo, jobs))
        try:
            wait_jobs(runs, pending, started, POLL_S if args.submitit_local else 10 * POLL_S, out)
        except KeyboardInterrupt:
            ids = sorted({job.job_id.split("_")[0] for job in pending.values()})
            if args.submitit_local:
                for job in pending.values():
                    job.cancel(check=False)
                print("interrupted: the runs were stopped; launch the same command again to resume", file=out)
            else:
                print(f"interrupted: the submitted jobs keep running (job {', '.join(ids)}); wait for them "
                      f"(or scancel them) before launching the same command again", file=out)
            return 130
    failed = [r for r in runs if r.state == "failed"]
    print(f"summary: {len(runs) - len(failed)} done, {len(failed)} failed, in {fmt_time(time.time() - started)}; "
          f"logs in {log_dir}", file=out)
    for run in failed:
        print(f"  failed: {run.name} ({run.reason})", file=out)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise LaunchError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", help=f"one of {', '.join(protocols())}, or several joined by commas")
    parser.add_argument("args", nargs="*", metavar="ARG", help="passed to the driver (KEY VALUE config overrides)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs (and with --slurm the sbatch script of each stage); start nothing")
    parser.add_argument("--log-dir", help="where each run's output goes (default: $OUTPUT/launch_logs)")
    pool = parser.add_argument_group("local pool")
    pool.add_argument("--gpus", help="device ids, e.g. 0,1,2,3 (default: $CUDA_VISIBLE_DEVICES, else all GPUs)")
    pool.add_argument("--per-gpu", type=int, default=1, help="runs at a time on each GPU (default 1)")
    slurm = parser.add_argument_group("SLURM (submitit)")
    slurm.add_argument("--slurm", action="store_true", help="submit job arrays to SLURM instead of a local pool")
    slurm.add_argument("--submitit-local", action="store_true",
                       help="the --slurm code path with submitit's local executor (to try it on one machine)")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", default="24:00:00",
                       help="time limit per job (default 24:00:00); a run that reaches it is requeued and resumes")
    slurm.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per run (default 1)")
    slurm.add_argument("--cpus", type=int, default=8, help="CPUs per run (default 8)")
    slurm.add_argument("--mem", help="memory per run, e.g. 64G")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--max-parallel", type=int, help="most runs of a job array running at once")
    slurm.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-opt exclude=node7 (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.per_gpu < 1:
        raise LaunchError(f"--per-gpu must be at least 1, got {args.per_gpu}")
    names = [n for n in args.protocol.split(",") if n]
    env = dict(os.environ)
    env.pop("DRY_RUN", None)
    env.setdefault("PYTHON", sys.executable)
    use_submitit = args.slurm or args.submitit_local
    if use_submitit:
        import_submitit()
    runs, n_finished = expand(names, args.args, env)
    log_dir = osp.abspath(args.log_dir) if args.log_dir else osp.join(output_root(env), "launch_logs")
    title = f"launch {args.protocol}: {len(runs)} run(s) to do, {n_finished} already finished"
    if use_submitit:
        print(f"# {title}" if args.dry_run else title, flush=True)
        return run_submitit(runs, args, log_dir, f"hicropl-{args.protocol.replace(',', '-')}", sys.stdout)
    if args.dry_run:
        print(f"# {title}")
        for run in runs:
            print(run.line)
        waiting = sum(1 for run in runs if run.needs)
        if waiting:
            print(f"# {waiting} of these start only after the run whose --output-dir is their --model-dir")
        return 0
    slots = [g for g in parse_gpus(args.gpus) for _ in range(args.per_gpu)]
    if not runs:
        print(title)
        return 0
    tty = sys.stdout.isatty()
    if not tty:
        print(f"{title}; {len(slots)} slot(s) on gpus {','.join(dict.fromkeys(slots))}", flush=True)
    return Pool(runs, slots, log_dir, env, sys.stdout, tty, f"{title} on {len(slots)} slot(s)").run()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
