"""One-off probe: our bf16 network step alone, img/s, system time and page faults (README, the allocator).

    GLIBC_TUNABLES=<old or new setting> python scripts/probes/net_step.py resnet50 128 64 sgd 3
"""
from simclr_ad import bench
import argparse
arch, size, bs, opt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
args = argparse.Namespace(arch=arch, image_size=size, batch_size=bs, optimizer=opt, small_map_gemm=True, data_dir=None)
cache = bench._load_images(args)
ours = bench._ours(args, cache)
for _ in range(2): ours["net"]()
ts=[]
r0=resource.getrusage(resource.RUSAGE_SELF)
for _ in range(int(sys.argv[5]) if len(sys.argv)>5 else 3):
    t=time.perf_counter(); ours["net"](); ts.append(time.perf_counter()-t)
r1=resource.getrusage(resource.RUSAGE_SELF)
print("net steps", ["%.3f"%t for t in ts], "img/s %.1f"%(bs/min(ts)), "sys %.2f user %.2f"%(r1.ru_stime-r0.ru_stime, r1.ru_utime-r0.ru_utime), "minflt", r1.ru_minflt-r0.ru_minflt, "rss MB", r1.ru_maxrss/1024)
