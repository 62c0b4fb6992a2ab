"""One-off probe: peak RSS after each full step of ours (README, ResNet50 SAM memory).

    GLIBC_TUNABLES="glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" python scripts/probes/rss_steps.py resnet50 128 64 sam 8
"""
import sys, torch, time
from simclr_ad import bench
import argparse
arch, size, bs, opt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
args = argparse.Namespace(arch=arch, image_size=size, batch_size=bs, optimizer=opt, small_map_gemm=True, data_dir=None)
cache = bench._load_images(args)
ours = bench._ours(args, cache)
def hwm():
    for l in open("/proc/self/status"):
        if l.startswith(("VmHWM","VmRSS")): yield l.split()[1]
for i in range(int(sys.argv[5])):
    t=time.perf_counter(); ours["full"](); 
    print(i, "%.2fs"%(time.perf_counter()-t), "HWM/RSS MB", [int(v)//1024 for v in hwm()], flush=True)
