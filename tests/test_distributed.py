"""`torchrun --nproc-per-node 2 -m fastxf.distributed --check`: a tiny Llama split
in two stages, one per process (gloo on CPU), compared with a single-process run.
The check prints the comparison and exits non-zero on a mismatch."""

import os
import shutil
import subprocess
import sys

import pytest

import fastxf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torchrun():
    here = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return here if os.path.exists(here) else shutil.which("torchrun")


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
def test_torchrun_check_two_stages_gloo():
    env = dict(os.environ)
    # The same fastxf as this test process (a checkout's python/ or the installed package).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastxf.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    # --standalone: rendezvous on a free local port, so parallel runs do not collide.
    cmd = [_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "fastxf.distributed", "--check",
           "--timeout", "80"]
    try:
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=110)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun check did not finish in 110 s:\n{e.stdout}\n{e.stderr}")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "check PASSED" in out, out
    assert "greedy tokens (recompute, no cache) vs single-process generate: identical" in out, out
