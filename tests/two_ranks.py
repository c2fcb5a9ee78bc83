"""Run a test body on 2 CPU processes (gloo) with a hard deadline, for the DDP-exactness tests.

``torch.multiprocessing.spawn(join=True)`` waits forever when a rank hangs (CI has one wall-clock limit for the whole
suite and showed only the dots before the hang), so this helper: binds gloo to the loopback interface (no hostname
lookup), sets a 60 s collective timeout, has every rank print all of its threads' stacks and exit when the deadline
passes, and fails the test with that in the output. A rank that raises fails the test with its traceback.
"""

import faulthandler
import os
import socket
import time
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp

from kmtr_monai import distributed as kd

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, body: Callable[[int], None], port: int, deadline_s: float) -> None:
    faulthandler.dump_traceback_later(deadline_s, exit=True)  # a hung rank shows where, then ends
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")  # fmt: skip
    kd.init_distributed(timeout_s=60)
    body(rank)
    torch.distributed.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


def run_on_two_ranks(body: Callable[[int], None], deadline_s: float = 240.0) -> None:
    """Run ``body(rank)`` (a module-level function, so that it pickles) on ranks 0 and 1 of a fresh gloo group."""
    ctx = mp.start_processes(_entry, args=(body, _free_port(), deadline_s), nprocs=WORLD, join=False,
                             start_method="spawn")  # fmt: skip
    give_up = time.monotonic() + deadline_s + 30.0
    while not ctx.join(timeout=2.0):  # raises with the rank's traceback when a rank fails
        if time.monotonic() > give_up:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{body.__name__} did not finish on {WORLD} ranks in {deadline_s:.0f} s (stacks above)")
