"""The lab's data-parallel helpers that need no process group."""
from __future__ import annotations

import inspect

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
