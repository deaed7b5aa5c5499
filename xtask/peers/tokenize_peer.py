"""Peer for `cargo xtask bench tokenize`: the reference's approach to tokenization (densify each
chunk of cells over the whole vocabulary, scale to 10,000, divide by the technology means, rank
with a stable argsort), in numpy + numba on one thread, on the same cells as sof. Then checks
that sof's tokens (Parquet shards) are identical.

Usage: python tokenize_peer.py <input.h5ad> <means.tsv> <mode: fixed|nicheformer> <sof corpus dir>
Prints one JSON line: {"cells", "compute_s", "cells_per_s", "peak_rss_mib", "identical", "compared"}."""
import glob, json, resource, sys, time

import anndata as ad
import numba
import numpy as np
import pyarrow.parquet as pq

inp, means_path, mode, corpus = sys.argv[1:5]
a = ad.read_h5ad(inp)
X = a.X.tocsr() if hasattr(a.X, "tocsr") else a.X
means = np.array([float(l.split("\t")[1]) for l in open(means_path).read().splitlines()[1:]])
assert len(means) == a.n_vars, "the bench uses the file's own genes as the vocabulary"
fixed = mode == "fixed"
m = means.copy()
skip = np.isnan(m) | (m < 0) if fixed else np.zeros(len(m), dtype=bool)
m = np.nan_to_num(m, nan=0.0)
m = np.floor(m + 0.5)
m[m == 0] = 1.0


@numba.njit(cache=False)
def rank_chunk(dense, m, skip, max_genes, out_tok, out_len):
    for r in range(dense.shape[0]):
        row = dense[r]
        total = row.sum()
        if total <= 0:
            out_len[r] = 0
            continue
        scale = 10000.0 / total
        vals = np.zeros(row.shape[0])
        for g in range(row.shape[0]):
            if row[g] != 0 and not skip[g]:
                vals[g] = row[g] * scale / m[g]
        order = np.argsort(-vals, kind="mergesort")
        k = 0
        for g in order:
            if vals[g] == 0 or k == max_genes:
                break
            out_tok[r, k] = g + 30
            k += 1
        out_len[r] = k


CHUNK = 2048
max_genes = 1497
results = []
# Warm up the JIT outside the timed region.
rank_chunk(np.zeros((1, a.n_vars)), m, skip, max_genes, np.zeros((1, max_genes), np.int32), np.zeros(1, np.int32))
t0 = time.perf_counter()
for s in range(0, a.n_obs, CHUNK):
    e = min(s + CHUNK, a.n_obs)
    dense = X[s:e].toarray().astype(np.float64) if hasattr(X, "toarray") else np.asarray(X[s:e], dtype=np.float64)
    tok = np.zeros((e - s, max_genes), np.int32)
    ln = np.zeros(e - s, np.int32)
    rank_chunk(dense, m, skip, max_genes, tok, ln)
    results.extend(tok[i, : ln[i]] for i in range(e - s))
compute_s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

ours = {}
for f in sorted(glob.glob(f"{corpus}/shard-*.parquet")):
    t = pq.read_table(f, columns=["cell_index", "tokens"])
    for i, toks in zip(t.column("cell_index").to_pylist(), t.column("tokens").to_pylist()):
        ours[i] = toks
identical = True
for i, r in enumerate(results):
    if len(r) == 0:
        identical &= i not in ours
    else:
        identical &= ours.get(i) == r.tolist()
print(json.dumps(dict(cells=a.n_obs, compute_s=compute_s, cells_per_s=a.n_obs / compute_s, peak_rss_mib=peak, identical=bool(identical), compared=len(results))))
