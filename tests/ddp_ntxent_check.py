"""Run under ``torchrun --nproc_per_node 2``: NT-Xent with gathered negatives on two ranks must
equal the single-process loss on the same global batch (and so must the gradients)."""
import sys

import torch
import torch.distributed as dist

from simclr_ad.losses import nt_xent

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
full = nt_xent(0.5)(z0, z1)
local0 = z0.chunk(world)[rank].clone().requires_grad_(True)
local1 = z1.chunk(world)[rank].clone().requires_grad_(True)
distributed = nt_xent(0.5, distributed=True)(local0, local1)
mean = distributed.detach().clone()
dist.all_reduce(mean)
mean /= world
ok = torch.allclose(mean, full, atol=1e-6)
local_only = nt_xent(0.5)(local0.detach(), local1.detach())  # the classic bug: negatives not gathered
ok = ok and not torch.allclose(local_only, full, atol=1e-4)
if rank == 0:
    print(f"full={full.item():.6f} distributed={mean.item():.6f} local_only={local_only.item():.6f} ok={ok}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
