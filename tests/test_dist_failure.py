"""Distributed failure: when one of 2 gloo ranks raises (or stalls) mid-epoch, the other exits within a bounded time
(``dist_timeout_s``) with an error naming its rank and the cause, instead of hanging.

The two ranks are started as plain processes with the torchrun environment variables (as a cluster scheduler such
as srun starts them), not under torchrun: torchrun's agent kills the surviving workers itself, which would hide
whether a rank on its own gets out of a dead collective.
"""

import ast
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from ignite.engine import Engine, Events

from kmtr_monai.bundle import bundle_command

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 20


class FailOnRank:
    """Test-only trainer handler: on ``rank``, after iteration ``iteration`` of epoch ``epoch``, raise
    (``mode="raise"``) or stop responding for ``seconds`` (``mode="stall"``)."""

    def __init__(self, rank: int, epoch: int, iteration: int, mode: str = "raise", seconds: float = 120.0) -> None:
        self.rank, self.epoch, self.iteration, self.mode, self.seconds = rank, epoch, iteration, mode, seconds

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from kmtr_monai.distributed import get_rank

        s = engine.state
        if get_rank() == self.rank and s.epoch == self.epoch and (s.iteration - 1) % s.epoch_length + 1 == self.iteration:
            if self.mode == "stall":
                time.sleep(self.seconds)
            raise RuntimeError(f"injected failure on rank {self.rank} at epoch {s.epoch}, iteration {s.iteration}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cohort: Path, run: Path, mode: str):
    layer = run / "fault.json"
    run.mkdir(parents=True)
    layer.write_text(json.dumps({
        "fault": {"_target_": "test_dist_failure.FailOnRank", "rank": 1, "epoch": 2, "iteration": 1, "mode": mode},
        "train#trainer#train_handlers": "$@train#handlers_every_rank + [@fault] + "
                                        "(@train#handlers_main_rank if kmtr_monai.distributed.is_main_process() else [])",
    }))  # fmt: skip
    overrides = {"dataset_dir": cohort, "ckpt_dir": run / "models", "output_dir": run / "eval", "max_epochs": 3,
                 "mae_batch_size": 2, "dist_timeout_s": TIMEOUT_S, "resume": False}  # 2 iterations per epoch per rank
    cmd = bundle_command("image-mae", "tiny", overrides, multi_gpu=True)
    i = cmd.index("--config_file") + 1
    cmd[i] = repr([*ast.literal_eval(cmd[i]), str(layer)])
    port = str(_free_port())
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        logs.append(open(run / f"rank{rank}.log", "w"))
        procs.append(subprocess.Popen(cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    return procs, logs


def _wait(proc, seconds: float) -> float | None:
    """Seconds until ``proc`` exits, or None if it is still running after ``seconds``."""
    start = time.time()
    while time.time() - start < seconds:
        if proc.poll() is not None:
            return time.time() - start
        time.sleep(0.1)
    return None


def _when_failed(run: Path, proc, seconds: float = 180.0) -> None:
    """Wait until rank 1 has reached the fault (its log says so) or exited."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if "Epoch: 2/3, Iter: 1/2" in (run / "rank0.log").read_text():
            return
        time.sleep(0.1)


def _cleanup(procs, logs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in logs:
        f.close()


def test_rank_raising_mid_epoch_makes_the_other_rank_exit_with_a_clear_error(tiny_cohort, tmp_path):
    run = tmp_path / "raise"
    procs, logs = _launch(tiny_cohort, run, "raise")
    try:
        rank1_after = _wait(procs[1], 240)
        assert rank1_after is not None, "the raising rank did not exit"
        assert procs[1].returncode != 0
        rank0_after = _wait(procs[0], TIMEOUT_S + 30)  # bounded: within the collective timeout plus teardown
        assert rank0_after is not None, "rank 0 hangs after rank 1 raised: " + (run / "rank0.log").read_text()[-2000:]
        assert procs[0].returncode != 0
    finally:
        _cleanup(procs, logs)
    log1, log0 = (run / "rank1.log").read_text(), (run / "rank0.log").read_text()
    assert "injected failure on rank 1 at epoch 2, iteration 3" in log1
    assert "bundle 'image-mae': rank 1 of 2 raised at epoch 2, iteration 3: RuntimeError" in log1
    assert "DistributedFailure: bundle 'image-mae': rank 0 of 2 stopped at epoch 2" in log0, log0[-3000:]
    assert f"collectives give up after {TIMEOUT_S} s (dist_timeout_s)" in log0
    assert "Backend error: DistributedFailure" not in log0  # wrapped once
    assert log1.count("rank 1 of 2 raised") == 1


def test_stalled_rank_makes_the_other_rank_exit_after_dist_timeout_s(tiny_cohort, tmp_path):
    """Rank 1 stops responding mid-epoch (a hung data read, a deadlock): rank 0's next gradient all-reduce gives up
    after ``dist_timeout_s`` and the run exits with the clear error, not after the default 30 minutes."""
    run = tmp_path / "stall"
    procs, logs = _launch(tiny_cohort, run, "stall")
    try:
        _when_failed(run, procs[1])
        assert procs[1].poll() is None, (run / "rank1.log").read_text()[-2000:]  # rank 1 is stalled, not dead
        rank0_after = _wait(procs[0], TIMEOUT_S + 40)
        assert rank0_after is not None, "rank 0 still waits: " + (run / "rank0.log").read_text()[-2000:]
        assert procs[0].returncode != 0
    finally:
        _cleanup(procs, logs)
    log0 = (run / "rank0.log").read_text()
    assert "DistributedFailure: bundle 'image-mae': rank 0 of 2 stopped at epoch 2" in log0, log0[-3000:]
    assert rank0_after >= TIMEOUT_S - 5  # it was the timeout that freed it (measured from rank 0's last log line)
