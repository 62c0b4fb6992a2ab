"""The allocator settings our stages run under keep large blocks mapped once freed."""
import os
import subprocess
import sys

import pytest

from simclr_ad import runtime

PROBE = """
import torch

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

before = rss_mb()
x = torch.ones(128 * 2**20, dtype=torch.uint8)  # 128 MB, touched
del x
print(round(rss_mb() - before))
"""


def _rss_kept_after_free(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_tuned_malloc_keeps_a_freed_large_block_mapped_where_plain_glibc_unmaps_it():
    assert _rss_kept_after_free(runtime.MALLOC_TUNABLES) >= 120  # reused next step without page faults
    assert _rss_kept_after_free(None) < 20  # plain glibc: mmapped, unmapped on free, faulted in again
