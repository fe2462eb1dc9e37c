#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention on the decode shapes of pkv_bench_cuda_decode_attention.

One query token per sequence over an fp16 KV cache: q [batch, 32, 1, 128], k and v
[batch, 8, context, 128], fp16, GQA 4:1. With torch >= 2.5, enable_gqa=True lets SDPA read
the 8 KV heads as they are ("sdpa-fp16"); otherwise K and V are expanded to 32 heads with
repeat_interleave before timing ("sdpa-fp16-rep", which then reads 4 times the bytes; the
MB_read column still counts the 8-head cache, the bytes a GQA kernel needs).
Timing: CUDA events around 10 calls queued back to back, divided by 10; median of --reps.
Prints rows in the format of pkv_bench_cuda_decode_attention:
  method batch context splits median_us MB_read GB_s pct_peak pct_copy
pct_peak uses --peak-gbs (the pkv bench's HBM peak; nan without it); pct_copy a
device-to-device copy of 1 GiB measured here.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F


def timed(fn, reps, inner=10):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(inner):
            fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / inner)
    return statistics.median(times)  # ms


def copy_gbs():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), 10, inner=1)
    return 2.0 * a.numel() / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="4096,32768,131072")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--peak-gbs", type=float, default=float("nan"))
    args = ap.parse_args()
    hq, hkv, d = 32, 8, 128
    torch.manual_seed(0)
    copy = copy_gbs()
    print(f"# torch {torch.__version__} sdpa decode: {torch.cuda.get_device_name()}, "
          f"HBM peak {args.peak_gbs:.0f} GB/s (given), device copy {copy:.0f} GB/s")
    print(f"{'method':<14} {'batch':>5} {'context':>8} {'splits':>6} {'median_us':>10} {'MB_read':>9} "
          f"{'GB_s':>8} {'pct_peak':>8} {'pct_copy':>8}")
    for batch in [int(x) for x in args.batches.split(",")]:
        for ctx in [int(x) for x in args.contexts.split(",")]:
            q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.float16)
            k = torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.float16)
            v = torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.float16)
            try:
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                name, fn = "sdpa-fp16", lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            except TypeError:  # torch < 2.5: no enable_gqa
                ke, ve = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
                name, fn = "sdpa-fp16-rep", lambda: F.scaled_dot_product_attention(q, ke, ve)
            ms = timed(fn, args.reps)
            mb = 2 * batch * hkv * ctx * d * 2 / 1e6
            gbs = mb * 1e6 / (ms * 1e-3) / 1e9
            print(f"{name:<14} {batch:>5} {ctx:>8} {'-':>6} {ms * 1e3:>10.1f} {mb:>9.1f} {gbs:>8.0f} "
                  f"{100 * gbs / args.peak_gbs:>8.1f} {100 * gbs / copy:>8.1f}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
