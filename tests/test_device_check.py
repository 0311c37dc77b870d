"""benchmarks/device_check.sh, the script a maintainer runs on a GPU, runs on
CPU too: with --tiny sizes on 2 forced CPU devices it prints its table, says
that no accelerator was found, and every check passes (the float32 fit's
mode agrees with the float64 fit's, the 2-device Gram with the 1-device one)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_on_cpu_with_tiny_sizes():
    env = {**os.environ, "PYTHON": sys.executable,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    # The acceptance bound of the tiny run (about 20 s on 2 cores), as a hang guard.
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--tiny"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    out = res.stdout
    assert "CPU only: no accelerator was found" in out
    table = {line.split("|")[1].strip(): line.split("|")[2].strip()
             for line in out.splitlines() if line.startswith("| ") and not line.startswith("| check")}
    assert table["platform"].startswith("cpu: 2 x")
    assert table["float64 on the device"] == "yes"
    assert table["tests test_flatten"] == "ok"
    assert re.fullmatch(r"[\d,]+ img/s", table["train resnet_tiny, batch 16"])
    cos = float(table["float32 vs float64 fit"].split()[-1])
    assert cos >= 0.999, out  # a sanity bound (a wrong mode gives ~0); the value is a measurement
    mesh = [line for line in out.splitlines() if line.startswith("| 2-device mesh")]
    assert mesh and "skipped" not in mesh[0], out
    assert float(mesh[0].split()[-2]) < 1e-12, mesh  # max ΔK / max K against one device
