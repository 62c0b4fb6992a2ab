"""One-off probe: SmallMapConv2d.gemm_path before/after (A: as committed, B: 3x3 im2col off), interleaved.
It compared 075e74d's paths; at later commits B equals A.

    GLIBC_TUNABLES="glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" python scripts/probes/smallconv_ab.py resnet18 64 128 sgd 8
"""
import sys, torch, time, statistics
from simclr_ad import bench, smallconv
import argparse
arch, size, bs, opt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
args = argparse.Namespace(arch=arch, image_size=size, batch_size=bs, optimizer=opt, small_map_gemm=True, data_dir=None)
cache = bench._load_images(args)
ours = bench._ours(args, cache)
orig = smallconv.SmallMapConv2d.gemm_path
def patched(self, x):
    kh, kw = self.kernel_size
    p = orig(self, x)
    if p == "im2col" and kh*kw > 1:
        return None
    return p
variants = {"A": orig, "B": patched}
T = {k: [] for k in variants}
for k, f in variants.items():
    smallconv.SmallMapConv2d.gemm_path = f; ours["net"]()
for _ in range(int(sys.argv[5])):
    for k, f in variants.items():
        smallconv.SmallMapConv2d.gemm_path = f
        t=time.perf_counter(); ours["net"](); T[k].append(time.perf_counter()-t)
for k,v in T.items(): print(k, "median %.3f"%statistics.median(v), ["%.2f"%x for x in v])
