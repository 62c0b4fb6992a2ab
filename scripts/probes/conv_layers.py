"""One-off probe: oneDNN vs smallconv per layer, fwd+bwd ms (smallconv module doc, README).

    GLIBC_TUNABLES="glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736" python scripts/probes/conv_layers.py
"""
import torch, time, statistics, sys
from simclr_ad import smallconv
torch.set_num_threads(2)
bf = torch.bfloat16
def med(f, n=7):
    f(); f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return statistics.median(ts)*1e3
for (N,C,O,H,k,s,p) in [(256,256,256,4,3,1,1),(256,128,256,8,3,2,1),(256,512,512,2,3,1,1),(128,512,512,4,3,1,1),(128,256,512,8,3,2,1)]:
    x = torch.randn(N,C,H,H,dtype=bf).contiguous(memory_format=torch.channels_last)
    w = torch.randn(O,C,k,k,dtype=bf).contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.conv2d(x,w,stride=s,padding=p)
    g = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    fl = 2*y.numel()*C*k*k/1e9
    fwd = med(lambda: torch.nn.functional.conv2d(x,w,stride=s,padding=p))
    bd = med(lambda: torch.ops.aten.convolution_backward(g,x,w,None,[s,s],[p,p],[1,1],False,[0,0],1,[True,False,False]))
    bw = med(lambda: torch.ops.aten.convolution_backward(g,x,w,None,[s,s],[p,p],[1,1],False,[0,0],1,[False,True,False]))
    conv = torch.nn.Conv2d(C,O,k,s,p,bias=False).to(memory_format=torch.channels_last); smallconv.convert(conv)
    xr = x.clone().requires_grad_()
    def sc():
        with torch.autocast("cpu",dtype=bf):
            out = conv(xr)
        out.backward(g)
    path = conv.gemm_path(x)
    tsc = med(sc)
    print(f"{(N,C,O,H,k,s)} GF={fl:.2f} onednn fwd {fwd:.1f}ms ({fl/fwd*1e3:.0f}) bwd-data {bd:.1f} ({fl/bd*1e3:.0f}) bwd-w {bw:.1f} ({fl/bw*1e3:.0f}) | smallconv[{path}] fwd+bwd {tsc:.1f} ({3*fl/tsc*1e3:.0f}) vs onednn total {fwd+bd+bw:.1f}")
# 1x1 strided and 1x1 on small maps
for (N,C,O,H,s) in [(256,128,256,8,2),(256,256,512,4,2),(128,512,1024,16,2),(128,1024,2048,8,2),(128,2048,512,4,1),(128,512,2048,4,1)]:
    x = torch.randn(N,C,H,H,dtype=bf).contiguous(memory_format=torch.channels_last)
    w = torch.randn(O,C,1,1,dtype=bf).contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.conv2d(x,w,stride=s)
    g = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    fl = 2*y.numel()*C/1e9
    tot = med(lambda: torch.nn.functional.conv2d(x,w,stride=s)) + med(lambda: torch.ops.aten.convolution_backward(g,x,w,None,[s,s],[0,0],[1,1],False,[0,0],1,[True,True,False]))
    conv = torch.nn.Conv2d(C,O,1,s,0,bias=False).to(memory_format=torch.channels_last); smallconv.convert(conv)
    xr = x.clone().requires_grad_()
    def sc():
        with torch.autocast("cpu",dtype=bf):
            out = conv(xr)
        out.backward(g)
    print(f"1x1 {(N,C,O,H,s)} onednn total {tot:.1f}ms ({3*fl/tot*1e3:.0f}) smallconv[{conv.gemm_path(x)}] {med(sc):.1f}ms")
