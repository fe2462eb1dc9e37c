"""How much of a Lloyd iteration could an exact bound-based k-means skip on pkv's GPU
benchmark data? A question for the HBM-floor target, not a k-means pkv runs.

Hamerly and Yinyang k-means keep, for every point, an upper bound on the distance to
its centroid and lower bounds on the distances to the others, and move them by the
centroids' drift after each update. A point whose upper bound stays below its lower
bound keeps its label without being read; only the others are read and re-scored.
Below the 1.5x-of-the-HBM-floor line (bench/kmeans_gpu_vs_torch.sh) a full pass at
k = 256, d = 128 cannot get (it would need 734 TFLOP/s of fp16 products), so the only
way there is to read fewer points.

This runs plain Lloyd (numpy, float32 distances, exact double sums) on standard normal
points, as pkv_bench_cuda_kmeans does, and prints per iteration:
  ham        points Hamerly must read (upper bound, drifted, above the drifted lower bound)
  ham_tight  the same after the upper bound is tightened to the exact distance
  yy         points Yinyang must read (the tightened bound above some group's bound)
  yy_groups  share of the (point, group) pairs Yinyang re-scores
  changed    points whose label changed
Groups: centroid index mod G (Yinyang's paper groups by clustering the first centroids).

What it found on the defaults: docs/kmeans_gpu.md.

Usage: /usr/bin/python3 bench/kmeans_bounds_skip.py [--n 300000] [--k 256] [--d 128]
       [--iters 20] [--groups 26] [--seed 0]
"""
import argparse

import numpy as np


def distances(x, xx, c):
    d2 = xx[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def group_bounds(dist, labels, group, n_groups):
    """Per point and group: the distance to the nearest centroid of the group other
    than the point's own."""
    other = dist.copy()
    other[np.arange(dist.shape[0]), labels] = np.inf
    return np.stack([other[:, group == g].min(1) for g in range(n_groups)], axis=1), other.min(1)


def cluster_sums(x, labels, k):
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.zeros((k, x.shape[1]))
    nonempty = counts > 0
    sums[nonempty] = np.add.reduceat(x[order].astype(np.float64), starts[nonempty], axis=0)
    return sums, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--groups", type=int, default=26)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.n, a.d), dtype=np.float32)
    xx = (x * x).sum(1)
    c = x[rng.choice(a.n, a.k, replace=False)].copy()
    group = np.arange(a.k) % a.groups
    rows = np.arange(a.n)

    dist = distances(x, xx, c)
    labels = dist.argmin(1)
    upper = dist[rows, labels]
    lower_g, lower = group_bounds(dist, labels, group, a.groups)
    print(f"n = {a.n}, k = {a.k}, d = {a.d}, groups = {a.groups}: shares of the points (or pairs)")
    print(f"{'iter':>4} {'max drift':>10} {'ham':>6} {'ham_tight':>10} {'yy':>6} {'yy_groups':>10} {'changed':>8}")
    for it in range(1, a.iters + 1):
        sums, counts = cluster_sums(x, labels, a.k)
        new_c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c).astype(np.float32)
        drift = np.sqrt(((new_c - c).astype(np.float64) ** 2).sum(1))
        c = new_c
        upper = upper + drift[labels]
        lower = lower - drift.max()
        lower_g = lower_g - np.array([drift[group == g].max() for g in range(a.groups)])[None, :]
        dist = distances(x, xx, c)
        tight = dist[rows, labels]
        new_labels = dist.argmin(1)
        print(f"{it:4d} {drift.max():10.4f} {(upper > lower).mean():6.3f} {(tight > lower).mean():10.3f} "
              f"{(tight[:, None] > lower_g).any(1).mean():6.3f} {(tight[:, None] > lower_g).mean():10.3f} "
              f"{(new_labels != labels).mean():8.4f}", flush=True)
        labels = new_labels
        upper = dist[rows, labels]
        lower_g, lower = group_bounds(dist, labels, group, a.groups)


if __name__ == "__main__":
    main()
