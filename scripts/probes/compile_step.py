"""One-off probe: torch.compile of the backbone vs eager, net step (README, tried and dropped).

    GLIBC_TUNABLES="glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" python scripts/probes/compile_step.py resnet18 64 128 sgd compile 6
"""
import sys, torch, time, statistics
from simclr_ad import bench
import argparse
arch, size, bs, opt, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
args = argparse.Namespace(arch=arch, image_size=size, batch_size=bs, optimizer=opt, small_map_gemm=mode!="nosmall", data_dir=None)
cache = bench._load_images(args)
ours = bench._ours(args, cache)
m = ours["model"]
if mode.startswith("compile"):
    t=time.perf_counter()
    m.backbone = torch.compile(m.backbone)
    ours["net"]()
    print("compile+first step %.1fs"%(time.perf_counter()-t))
for _ in range(2): ours["net"]()
T=[]
for _ in range(int(sys.argv[6])):
    t=time.perf_counter(); ours["net"](); T.append(time.perf_counter()-t)
print(mode, "net median %.3f  img/s %.1f"%(statistics.median(T), bs/statistics.median(T)), ["%.3f"%x for x in T])
