"""Run a script of this folder in a fresh process with N fake CPU devices; parse its JSON."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, devices: int = 8, timeout: int = 600,
               extra_env: dict | None = None, wait: bool = True):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.update(extra_env or {})
    cmd = [sys.executable, str(ROOT / "tests" / "sharding" / name), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return last_json(done.stdout)


def last_json(stdout: str):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
