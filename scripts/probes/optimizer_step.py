"""One-off probe: optimizer step time, SGD plain/foreach/fused, then AdamW plain/fused (ResNet18).

    python scripts/probes/optimizer_step.py
"""
import torch, time, statistics
from simclr_ad import models, optim
torch.set_num_threads(2)
bb, dim = models.build_backbone("resnet18")
m = models.SimCLRModel(bb, dim).to(memory_format=torch.channels_last)
for kw in ({}, {"foreach": True}, {"fused": True}):
    opt = torch.optim.SGD(optim.param_groups_no_decay(m, 1e-6), lr=0.01, momentum=0.9, **kw)
    T=[]
    for i in range(6):
        for p in m.parameters(): p.grad = torch.randn_like(p)
        t=time.perf_counter(); opt.step(); T.append(time.perf_counter()-t)
    print(kw, "%.1fms"%(1e3*statistics.median(T)))
m = models.build_classifier("resnet18", 4).to(memory_format=torch.channels_last)
for kw in ({}, {"fused": True}):
    opt = torch.optim.AdamW(optim.param_groups_no_decay(m, 1e-8), lr=1e-4, **kw)
    T=[]
    for i in range(6):
        for p in m.parameters(): p.grad = torch.randn_like(p)
        t=time.perf_counter(); opt.step(); T.append(time.perf_counter()-t)
    print(kw, "%.1fms"%(1e3*statistics.median(T)))
