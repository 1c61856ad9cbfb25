"""Run `studio` commands in two CPU processes under accelerate, as the multi-process tests do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

#: the checkout: the working directory of launched processes
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on now (the default rendezvous port 29500 may be held by another job)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``studio <args>`` in a 2-process CPU launch on a free rendezvous port. On failure, ``stderr`` holds
    the workers' own error lines first, then the end of the launcher's output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "studio_cli",
        *args,
    ]
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line or "error:" in line]
        result.stderr = "\n".join(errors[:20]) + "\n...\n" + result.stderr[-1000:]
    return result
