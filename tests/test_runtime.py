"""The allocator settings our stages run under keep large blocks mapped once freed."""
import os
import subprocess
import sys

import pytest
import torch

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


ZEN3 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes"  # AVX2, no AVX-512
ZEN4 = ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS = ZEN4 + " amx_bf16 amx_tile amx_int8"


@pytest.mark.parametrize("flags, expected", [(ZEN3, "avx2"), (ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx"),
                                             ("fpu sse sse2 avx", "other"), ("", "other")])
def test_host_class_from_cpu_flags(flags, expected):
    assert runtime.host_class(flags) == expected


def test_host_class_reads_the_flags_line_of_cpuinfo():
    cpuinfo = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {ZEN3}\n\nprocessor\t: 1\nflags\t\t: {ZEN3}\n"
    assert runtime.host_class(runtime.cpu_flags(cpuinfo)) == "avx2"
    assert runtime.cpu_flags("processor\t: 0\n") is None
    assert runtime.host_class() in runtime.HOST_CLASSES  # this machine's


def test_auto_precision_is_bf16_only_where_bf16_is_fast():
    cpu = torch.device("cpu")
    assert runtime._pick_dtype("auto", cpu, "avx2") is None  # fp32: bf16 is emulated, slower
    assert runtime._pick_dtype("auto", cpu, "other") is None
    assert runtime._pick_dtype("auto", cpu, "avx512_bf16") is torch.bfloat16
    assert runtime._pick_dtype("auto", cpu, "amx") is torch.bfloat16
    assert runtime._pick_dtype("bf16", cpu, "avx2") is torch.bfloat16  # asked for explicitly: obeyed
    assert runtime._pick_dtype("fp32", cpu, "amx") is None
