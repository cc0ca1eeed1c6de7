"""Compact CPU memory for long-context training (``--compact-cpu-memory``).

On a CPU, PyTorch allocates tensors with the C library's ``malloc``. glibc serves a request from a
private ``mmap`` (returned to the system on ``free``) only above a threshold that it *raises* to the size
of every mmapped block freed, up to 32 MiB. After the first training step, the activations of a
long-context step (9-50 MB each for SmolLM2 at 8k-16k) therefore come from the heap, and a freed block
stays in the process, fragmented between long-lived ones. The resident peak then measures the
allocator's history more than the live tensors: one S2-Attn step of the bundled model at 8k peaked at
2.9-3.8 GB of RSS in repeated runs, and at 1.87 GB with a fixed 64 KiB threshold (whose peaks S2-Attn
and full attention share within 0.2%: ``benchmarks/train_step.py``).

Only tensors under that 32 MiB ceiling are affected: at 32k tokens and beyond, the bundled model's
activations are larger and glibc maps each of them anyway; consistently, one step at 32k peaked at
4.0 GB and one at 64k at 8.2 GB without this setting, less than or close to 16k's 6.2-6.7 GB.
For models with a wider hidden size the range where it matters moves to shorter contexts.

The price is paid in page faults: every large tensor is fresh memory that the kernel zeroes on first
touch, and the same step ran about 30% slower (AVX512-BF16 CPU, 2 threads). So this is an option for
when memory, not time, limits the context, not a default. Transparent huge pages for those blocks
(``glibc.malloc.hugetlb=1``) did not recover the time. A different allocator (jemalloc, tcmalloc via
``LD_PRELOAD``) is meant to avoid both costs (not measured here) but must be installed and preloaded
before Python starts; this needs neither.

It is ``mallopt(M_MMAP_THRESHOLD, ...)`` (what the ``MALLOC_MMAP_THRESHOLD_`` environment variable does
at start-up), called at run time; it affects allocations made after the call. Only glibc has it: on
other C libraries and systems the call reports that it did nothing.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
COMPACT_MMAP_THRESHOLD = 64 * 1024  # bytes: every tensor of 16k fp32 values or more is its own mapping


def compact_cpu_memory(threshold: int = COMPACT_MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more from its own ``mmap`` from now on, so freed
    activations go back to the system at once. Returns True when the C library took the setting (glibc
    on Linux), False where there is no such setting (the call is then harmless)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
