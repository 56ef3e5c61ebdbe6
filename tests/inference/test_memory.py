"""retain_freed_memory: glibc keeps the memory freed between forwards, so they take no page faults. Measured in
subprocesses (the setting acts on the whole process) whose environment makes glibc map every block of 128 KiB
and more afresh, as it may do for a forward's feature maps: each 20 MB tensor then faults in all its pages."""
import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
import bnn.inference
if sys.argv[1] == "retain" and not bnn.inference.retain_freed_memory():
    sys.exit(3)
def touch():
    x = torch.empty(5_000_000)  # 20 MB: 4883 pages
    x.fill_(1.0)
    del x
for _ in range(10):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    touch()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")


def faults_per_tensor(mode):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode == 3:
        pytest.skip("no glibc mallopt here")
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


def test_freed_memory_is_kept_and_faults_stop():
    assert faults_per_tensor("default") > 4000  # every tensor maps fresh pages
    assert faults_per_tensor("retain") < 1000  # the heap keeps them (a later block may still land on new ones)
