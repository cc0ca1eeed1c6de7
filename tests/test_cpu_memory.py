"""``--compact-cpu-memory``: freed activation-sized blocks go back to the system at once.

Each check runs in a fresh child process (the setting is process-wide and only affects later allocations)
and compares a child that calls ``compact_cpu_memory()`` with one that does not, so a setting that does
nothing fails: the allocator must behave differently, not merely report success.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from longlora.training.cpu_memory import COMPACT_MMAP_THRESHOLD, compact_cpu_memory

# a step's pattern: activation-sized blocks interleaved with small long-lived ones, then the blocks freed
HELD_AFTER_FREE = textwrap.dedent(
    """
    import sys
    import torch
    from longlora.training.cpu_memory import compact_cpu_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "on":
        assert compact_cpu_memory()
    x = torch.empty(16 << 20, dtype=torch.uint8).fill_(1)
    del x  # without the setting, glibc raises its mmap threshold to 16 MB here
    base = rss_mb()
    blocks, kept = [], []
    for _ in range(20):
        blocks.append(torch.empty(10 << 20, dtype=torch.uint8).fill_(1))
        kept.append(torch.ones(4096))
    del blocks
    print(round(rss_mb() - base))
    """
)

# glibc marks a chunk served by its own mmap with the IS_MMAPPED bit (0x2) of the size word just before
# the pointer malloc returns; a chunk from the heap has it clear
MMAPPED = textwrap.dedent(
    """
    import ctypes, sys
    from longlora.training.cpu_memory import compact_cpu_memory

    if sys.argv[1] == "on":
        assert compact_cpu_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    p = libc.malloc(int(sys.argv[2]))
    size_word = ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value
    print(int(bool(size_word & 2)))
    libc.free(p)
    """
)


def _child(script: str, *args: str) -> int:
    # glibc's MALLOC_* tunables would fix the thresholds for both children and hide the setting's effect
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, env=env
    )
    return int(out.stdout.split()[-1])


def _glibc() -> bool:
    probe = (
        "from longlora.training.cpu_memory import compact_cpu_memory as c; raise SystemExit(0 if c() else 1)"
    )
    return subprocess.run([sys.executable, "-c", probe]).returncode == 0


needs_glibc = pytest.mark.skipif(
    not _glibc(), reason="this C library has no M_MMAP_THRESHOLD (not glibc on Linux)"
)


@needs_glibc
def test_a_block_above_the_threshold_gets_its_own_mapping():
    """100 KiB: above the setting's 64 KiB, below glibc's smallest default threshold (128 KiB, which it
    only ever raises), so only the setting can put it in its own mapping."""
    size = 100 * 1024
    assert COMPACT_MMAP_THRESHOLD < size < 128 * 1024
    assert _child(MMAPPED, "off", str(size)) == 0, "without the setting glibc serves it from the heap"
    assert _child(MMAPPED, "on", str(size)) == 1, "compact_cpu_memory() did not lower the mmap threshold"
    assert _child(MMAPPED, "on", str(COMPACT_MMAP_THRESHOLD // 2)) == 0  # small blocks stay on the heap


@needs_glibc
def test_freed_activation_blocks_return_to_the_system():
    # Without the setting, glibc's threshold has grown past the blocks (the 16 MB block freed first, as
    # after a training step): the 200 MB stay in the process, pinned between the small kept tensors.
    # With it, they are returned whatever came before.
    without = _child(HELD_AFTER_FREE, "off")
    assert without > 150, f"the scenario should keep the blocks without the setting (held {without} MB)"
    held = _child(HELD_AFTER_FREE, "on")
    assert held < 20, f"compact_cpu_memory(): {held} MB of freed blocks still held (without: {without} MB)"


def test_off_linux_or_without_glibc_it_reports_that_it_did_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert compact_cpu_memory() is False
