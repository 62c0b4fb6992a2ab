"""One-off probe: torch.profiler table of one network step (README, where a step goes).

    GLIBC_TUNABLES="glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" python scripts/probes/profile_step.py resnet50 128 64 sgd
"""
import sys, torch, time
from simclr_ad import bench
import argparse
arch, size, bs, opt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
args = argparse.Namespace(arch=arch, image_size=size, batch_size=bs, optimizer=opt, small_map_gemm=True, data_dir=None)
cache = bench._load_images(args)
ours = bench._ours(args, cache)
for _ in range(2): ours["net"]()
t=time.perf_counter(); ours["net"](); print("net step s", time.perf_counter()-t)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as p:
    ours["net"]()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=35, max_name_column_width=50))
