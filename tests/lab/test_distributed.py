"""The lab's data-parallel helpers: rank-0 logging, and leaving the process group."""
from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from muonclip.lab.distributed import NullLog
from muonclip.lab.metrics import MetricsLog


def test_null_log_takes_every_call_metrics_log_takes():
    """Ranks other than 0 log through NullLog: every public method of MetricsLog must exist there
    with the same parameters, or a call that works on rank 0 crashes the others."""
    public = [name for name, _ in inspect.getmembers(MetricsLog, inspect.isfunction) if not name.startswith("_")]
    assert public
    for name in public:
        assert hasattr(NullLog, name), name
        assert inspect.signature(getattr(NullLog, name)).parameters.keys() == \
            inspect.signature(getattr(MetricsLog, name)).parameters.keys(), name
    NullLog().write({"step": 1}, tensorboard=False)


# A one-process gloo group wrapped by DDP, as a training run makes it; prints the process's
# thread count before the group, with it, and after the lab's shutdown.
_SHUTDOWN_CHILD = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    from muonclip.lab import distributed as lab_dist

    def threads():
        return len(os.listdir("/proc/self/task"))

    model = torch.nn.Linear(8, 8)
    model(torch.randn(4, 8)).sum().backward()  # any lazily started torch thread starts here
    before = threads()
    lab_dist.join_process_group()  # from the environment, as torchrun sets it
    ctx = lab_dist.LabDist(rank=0, world_size=1, local_rank=0, owns_group=True)
    net = lab_dist.wrap_model(model, ctx)
    net(torch.randn(4, 8)).sum().backward()  # a DDP gradient all-reduce
    lab_dist.mean_across(1.0, ctx)
    during = threads()
    del net
    lab_dist.shutdown(ctx)
    print(before, during, threads())
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
def test_shutdown_ends_the_groups_threads_before_python_exits(tmp_path):
    """destroy_process_group alone leaves gloo's threads running while anything holds the
    group (torch._dynamo, imported by DDP after the group exists, does for good); they then end
    during interpreter exit, where a 2-process CLI run once aborted. Joined and left the lab's
    way (join_process_group, the DDP wrapper dropped, shutdown), they are gone."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, "-c", _SHUTDOWN_CHILD], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, during, after = map(int, proc.stdout.split())
    assert during > before  # the group's threads ran (else this test shows nothing)
    assert after == before, (before, during, after)
