"""pkv CPU k-means against faiss-cpu's k-means on the same data; run by kmeans_cpu_vs_faiss.sh.

Both sides get, for every (data set, k, seed): the same float32 points, the same k,
the same fixed number of Lloyd iterations (no early stop), random distinct training
points as initial centroids (each library draws its own from its seed), training on
all n points (subsampling disabled in both), and the same thread count.

Time per iteration: pkv's own per-iteration stats (assignment + update) and FAISS's
iteration_stats (cumulative loop time / iterations), the median over seeds. The runs
of the two libraries alternate, so background load hits both alike.

The "call s" columns are the whole training call (median): pkv's includes its
final assignment pass over all points (FAISS ends on its last update) and the
driver's process start and file read are excluded.

Objective: recomputed here for both from the returned centroids on all n points, in
the same way: labels from a float32 GEMM argmin (numpy), then the squared distance
of each point to its labelled centroid summed in float64. The comparison uses the
mean over seeds, since single-seed objectives of random-init k-means spread by 1-6%
(most at small k, where a bad initial draw merges two modes); cheap configurations
get more seeds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def objective(x, c, block=32768):
    """Sum over points of the squared distance to the nearest centroid (float64 sum)."""
    c = np.ascontiguousarray(c, dtype=np.float32)
    c64 = c.astype(np.float64)
    cn2 = (c64 * c64).sum(1).astype(np.float32)
    total = 0.0
    for i0 in range(0, x.shape[0], block):
        xb = x[i0:i0 + block]
        lab = np.argmin(cn2[None, :] - 2.0 * (xb @ c.T), axis=1)
        diff = xb.astype(np.float64) - c64[lab]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def gaussian_mixture(n, d, seed, components=64):
    """KV-like synthetic points: anisotropic Gaussian blobs with uneven weights and a
    few high-variance channels (the outlier channels real keys have)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 0.5))
    means = rng.normal(0.0, 2.0, size=(components, d)).astype(np.float32)
    scales = rng.uniform(0.3, 1.5, size=(components, d)).astype(np.float32)
    channel = np.ones(d, dtype=np.float32)
    channel[rng.choice(d, size=4, replace=False)] = 8.0
    comp = rng.choice(components, size=n, p=weights)
    x = np.empty((n, d), dtype=np.float32)
    for i0 in range(0, n, 1 << 16):
        cb = comp[i0:i0 + (1 << 16)]
        noise = rng.standard_normal((cb.size, d), dtype=np.float32)
        x[i0:i0 + cb.size] = (means[cb] + noise * scales[cb]) * channel
    return x


def run_pkv(driver, path, d, k, iters, seed, out, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run([driver, path, str(d), str(k), str(iters), str(seed), out], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"pkv driver failed ({res.returncode}): {res.stderr.strip()}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    c = np.fromfile(out, dtype=np.float32).reshape(k, d)
    return info["sec_per_iter"], info["wall_s"], c


def run_faiss(faiss, x, k, iters, seed):
    n, d = x.shape
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, verbose=False,
                      max_points_per_centroid=n, min_points_per_centroid=1)
    t0 = time.perf_counter()
    km.train(x)
    wall = time.perf_counter() - t0
    per_iter = km.iteration_stats[-1]["time"] / len(km.iteration_stats)
    return per_iter, wall, km.centroids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--keys", help="real key vectors, raw float32 [n x 64]")
    ap.add_argument("--keys-label", default="keys")
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seeds-cheap", type=int, default=10,
                    help="seeds for configurations of at most --cheap-flops (their objectives spread most)")
    ap.add_argument("--cheap-flops", type=float, default=2e10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", default="16,256,1024")
    ap.add_argument("--synthetic-n", default="100000,1000000")
    ap.add_argument("--json", help="write every run's numbers here")
    args = ap.parse_args()

    import faiss
    faiss.omp_set_num_threads(args.threads)
    ks = [int(v) for v in args.k.split(",") if v]
    sets = []  # (label, path, d)
    if args.keys:
        sets.append((args.keys_label, args.keys, 64))
    syn_ns = [int(float(v)) for v in args.synthetic_n.split(",") if v]
    if syn_ns:
        xs = gaussian_mixture(max(syn_ns), 128, seed=7)
        for n in syn_ns:
            path = os.path.join(args.work, f"gmm_d128_n{n}.f32")
            xs[:n].tofile(path)
            sets.append((f"gmm n={n}", path, 128))
        del xs

    hdr = (f"{'data':<22} {'n':>8} {'d':>4} {'k':>5} | {'pkv s/it':>9} {'faiss s/it':>10} {'faiss/pkv':>9} | "
           f"{'pkv call s':>10} {'faiss call s':>12} | "
           f"{'pkv obj':>12} {'faiss obj':>12} {'rel diff':>9} {'seed spread':>11}")
    print(hdr)
    print("-" * len(hdr))
    records = []
    for label, path, d in sets:
        x = np.fromfile(path, dtype=np.float32).reshape(-1, d)
        n = x.shape[0]
        out = os.path.join(args.work, "centroids.f32")
        for k in ks:
            if k > n:
                continue
            rows = []
            cheap = 2.0 * n * k * d * args.iters <= args.cheap_flops
            for s in range(max(args.seeds, args.seeds_cheap) if cheap else args.seeds):
                seed = 1234 + s
                p_it, p_wall, p_c = run_pkv(args.driver, path, d, k, args.iters, seed, out, args.threads)
                f_it, f_wall, f_c = run_faiss(faiss, x, k, args.iters, seed)
                row = dict(data=label, n=n, d=d, k=k, seed=seed, pkv_sec_per_iter=p_it, faiss_sec_per_iter=f_it,
                           pkv_wall_s=p_wall, faiss_wall_s=f_wall, pkv_obj=objective(x, p_c),
                           faiss_obj=objective(x, f_c))
                rows.append(row)
                records.append(row)
                print(f"  # seed {seed}: pkv {p_it:.4f} s/it obj {row['pkv_obj']:.6g} | faiss {f_it:.4f} s/it "
                      f"obj {row['faiss_obj']:.6g}", file=sys.stderr, flush=True)
            p_it = statistics.median(r["pkv_sec_per_iter"] for r in rows)
            f_it = statistics.median(r["faiss_sec_per_iter"] for r in rows)
            p_wall = statistics.median(r["pkv_wall_s"] for r in rows)
            f_wall = statistics.median(r["faiss_wall_s"] for r in rows)
            p_obj = statistics.mean(r["pkv_obj"] for r in rows)
            f_obj = statistics.mean(r["faiss_obj"] for r in rows)
            allobj = [r["pkv_obj"] for r in rows] + [r["faiss_obj"] for r in rows]
            spread = (max(allobj) - min(allobj)) / min(allobj)
            print(f"{label:<22} {n:>8} {d:>4} {k:>5} | {p_it:>9.4f} {f_it:>10.4f} {f_it / p_it:>9.2f} | "
                  f"{p_wall:>10.3f} {f_wall:>12.3f} | "
                  f"{p_obj:>12.6g} {f_obj:>12.6g} {100 * (p_obj - f_obj) / f_obj:>+8.2f}% {100 * spread:>10.2f}%",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
