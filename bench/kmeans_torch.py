#!/usr/bin/env python3
"""Plain PyTorch Lloyd loops, the baseline of bench/kmeans_gpu_vs_torch.sh.

single: N x d fp16 points on the GPU; one iteration = GEMM scores x @ c.T (fp16
operands, fp32 accumulation and output), ||c||^2 - 2 x.c, argmin, then the update
with index_add_ (fp32 sums) and bincount, c = sums / counts (empty clusters keep their
centroid). Rows are processed in chunks so the N x k score matrix fits.
model: B problems x T tokens x d fp16; one iteration = bmm scores (fp32 out), argmin,
scatter-add of the points into [B, k, d] fp32 sums, counts by scatter-add, divide.
Prints one CSV line per measurement: torch,single,N,d,k,ms_per_iteration and
torch,model,B,T,d,k,iters,seconds.
"""
import argparse
import sys

import torch


def gaussian(n, d, gen):
    return torch.randn(n, d, generator=gen, device="cuda", dtype=torch.float32).half()


def scores(xc, c16, cnorm):
    try:
        dot = torch.mm(xc, c16.t(), out_dtype=torch.float32)
    except (TypeError, RuntimeError):  # older torch: fp16 output of an fp32-accumulated GEMM
        dot = torch.mm(xc, c16.t()).float()
    return cnorm[None, :] - 2.0 * dot


def lloyd_single(x, c, chunk):
    k, d = c.shape
    c16 = c.half()
    cnorm = (c16.float() ** 2).sum(1)
    sums = torch.zeros(k, d, device="cuda", dtype=torch.float32)
    counts = torch.zeros(k, device="cuda", dtype=torch.int64)
    for r0 in range(0, x.shape[0], chunk):
        xc = x[r0:r0 + chunk]
        labels = scores(xc, c16, cnorm).argmin(1)
        sums.index_add_(0, labels, xc.float())
        counts += torch.bincount(labels, minlength=k)
    nonempty = counts > 0
    return torch.where(nonempty[:, None], sums / counts.clamp(min=1)[:, None].float(), c)


def lloyd_model(x, c):
    b, t, d = x.shape
    k = c.shape[1]
    c16 = c.half()
    cnorm = (c16.float() ** 2).sum(2)
    try:
        dot = torch.bmm(x, c16.transpose(1, 2), out_dtype=torch.float32)
    except (TypeError, RuntimeError):
        dot = torch.bmm(x, c16.transpose(1, 2)).float()
    labels = (cnorm[:, None, :] - 2.0 * dot).argmin(2)  # [b, t]
    flat = (labels + torch.arange(b, device="cuda")[:, None] * k).reshape(-1)
    sums = torch.zeros(b * k, d, device="cuda", dtype=torch.float32)
    sums.index_add_(0, flat, x.reshape(-1, d).float())
    counts = torch.zeros(b * k, device="cuda", dtype=torch.float32)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    sums = sums.view(b, k, d)
    counts = counts.view(b, k)
    return torch.where(counts[:, :, None] > 0, sums / counts.clamp(min=1)[:, :, None], c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--ks", default="16,256,1024")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=2_000_000)
    ap.add_argument("--model", default="90,100000,64,30", help="B,T,d,iterations ('' skips)")
    ap.add_argument("--model-ks", default="32,256")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 0
    gen = torch.Generator(device="cuda").manual_seed(1)
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    x = gaussian(a.n, a.d, gen)
    for k in [int(v) for v in a.ks.split(",") if v]:
        c = x[:k].float().clone()
        c = lloyd_single(x, c, a.chunk)  # warm-up
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.iters):
            c = lloyd_single(x, c, a.chunk)
        stop.record()
        torch.cuda.synchronize()
        print(f"torch,single,{a.n},{a.d},{k},{start.elapsed_time(stop) / a.iters:.6f}", flush=True)
    del x
    torch.cuda.empty_cache()
    if a.model:
        b, t, d, iters = [int(v) for v in a.model.split(",")]
        xm = gaussian(b * t, d, gen).view(b, t, d)
        for k in [int(v) for v in a.model_ks.split(",") if v]:
            c = xm[:, :k, :].float().clone()
            c = lloyd_model(xm, c)  # warm-up
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                c = lloyd_model(xm, c)
            stop.record()
            torch.cuda.synchronize()
            print(f"torch,model,{b},{t},{d},{k},{iters},{start.elapsed_time(stop) / 1000.0:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
