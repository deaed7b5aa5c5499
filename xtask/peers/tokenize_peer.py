"""Peer for `cargo xtask bench tokenize`: the reference's approach to tokenization, in numpy +
numba on one thread, on the same cells as sof. Then checks that sof's tokens (Parquet shards)
are identical.

The reference (Nicheformer's `NicheformerDataset._process_chunk` and `_sub_tokenize_data`) first
aligns every dataset to its whole gene vocabulary (genes a dataset lacks are zero columns), then,
per chunk of cells: densify, scale each cell to 10,000 and divide by the technology's means
(vectorized numpy over the chunk), then per cell in numba: `np.nonzero`, and an argsort of the
non-zero values only. Here the argsort is stable (mergesort), so ties keep ascending gene order
as sof's do (the reference's default quicksort leaves ties arbitrary), and genes the technology
does not measure (NaN or negative means, sof's default "fixed" mode) are zeroed after the
division. `--panel-only` is a faster variant the reference does not do: it densifies only the
file's own genes (for a 400-gene spatial panel, 400 columns instead of the vocabulary's 20,310),
to show what an optimized dense peer reaches.

Usage: python tokenize_peer.py --write-vocab <input.h5ad> <vocab.tsv>   (the file's genes as a vocabulary)
       python tokenize_peer.py <input.h5ad> <vocab.tsv> <means.tsv (vocabulary order)>
       <mode: fixed|nicheformer> <sof corpus dir> [--panel-only]
Prints one JSON line: {"cells", "columns", "compute_s", "cells_per_s", "peak_rss_mib",
"identical", "compared"}."""
import glob, json, resource, sys, time

import anndata as ad
import numba
import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

if sys.argv[1] == "--write-vocab":
    genes = ad.read_h5ad(sys.argv[2], backed="r").var_names
    with open(sys.argv[3], "w") as f:
        f.write("index\ttoken_id\tensembl_id\n")
        f.writelines(f"{i}\t{i + 30}\t{g}\n" for i, g in enumerate(genes))
    sys.exit(0)

inp, vocab_path, means_path, mode, corpus = sys.argv[1:6]
panel_only = "--panel-only" in sys.argv[6:]
a = ad.read_h5ad(inp)
X = a.X.tocsr() if hasattr(a.X, "tocsr") else a.X
vocab = [l.split("\t")[2] for l in open(vocab_path).read().splitlines()[1:]]
index = {g: i for i, g in enumerate(vocab)}
means = np.array([float(l.split("\t")[1]) for l in open(means_path).read().splitlines()[1:]])
assert len(means) == len(vocab), "means are in vocabulary order"
file_to_vocab = np.array([index.get(g, -1) for g in a.var_names])
assert (file_to_vocab >= 0).all(), "the bench's files hold only vocabulary genes"
fixed = mode == "fixed"
m = means.copy()
skip = np.isnan(m) | (m < 0) if fixed else np.zeros(len(m), dtype=bool)
m = np.nan_to_num(m, nan=0.0)
m = np.floor(m + 0.5)
m[m == 0] = 1.0
if panel_only:
    # Columns = the file's genes in vocabulary order (ties break by vocabulary index).
    cols = np.sort(file_to_vocab)
else:
    cols = np.arange(len(vocab))
col_of_file = np.searchsorted(cols, file_to_vocab)
m_cols, skip_cols = m[cols], skip[cols]
tokens_of_col = (cols + 30).astype(np.int32)


@numba.njit(cache=False)
def rank_rows(x, token_of, max_genes, out_tok, out_len):
    """The reference's `_sub_tokenize_data`: per cell, argsort of its non-zero values only."""
    for r in range(x.shape[0]):
        cell = x[r]
        nonzero = np.nonzero(cell)[0]
        order = np.argsort(-cell[nonzero], kind="mergesort")
        k = min(len(nonzero), max_genes)
        for j in range(k):
            out_tok[r, j] = token_of[nonzero[order[j]]]
        out_len[r] = k


def normalize(dense):
    """The reference's `sf_normalize` and division by the technology's means, on a dense chunk."""
    counts = dense.sum(axis=1)
    counts += counts == 0.0
    np.multiply(dense, (10000.0 / counts).reshape((-1, 1)), out=dense)
    dense /= m_cols.reshape((1, -1))
    dense[:, skip_cols] = 0.0
    return dense


def densify(s, e):
    """Rows s..e of X as a dense float64 chunk over `cols` (the reference's aligned matrix)."""
    sub = X[s:e]
    if hasattr(sub, "indptr"):
        aligned = sp.csr_matrix((sub.data.astype(np.float64), col_of_file[sub.indices], sub.indptr),
                                shape=(e - s, len(cols)))
        return aligned.toarray()
    dense = np.zeros((e - s, len(cols)))
    dense[:, col_of_file] = np.asarray(sub, dtype=np.float64)
    return dense


CHUNK = 2048
max_genes = 1497
results = []
# Warm up the JIT outside the timed region.
rank_rows(np.ones((1, len(cols))), tokens_of_col, max_genes, np.zeros((1, max_genes), np.int32), np.zeros(1, np.int32))
t0 = time.perf_counter()
for s in range(0, a.n_obs, CHUNK):
    e = min(s + CHUNK, a.n_obs)
    dense = normalize(densify(s, e))
    tok = np.zeros((e - s, max_genes), np.int32)
    ln = np.zeros(e - s, np.int32)
    rank_rows(dense, tokens_of_col, max_genes, tok, ln)
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
print(json.dumps(dict(cells=a.n_obs, columns=len(cols), compute_s=compute_s, cells_per_s=a.n_obs / compute_s,
                      peak_rss_mib=peak, identical=bool(identical), compared=len(results))))
