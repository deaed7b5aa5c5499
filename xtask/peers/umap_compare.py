"""Our UMAP (sof_tasks::view::umap) beside Python's umap-learn on the same input: PCA-50 of a
shared dataset's log-normalized expression (fewer components where
there are fewer genes). A test tool, never a runtime need.

    python xtask/peers/umap_compare.py ../shared/data/starmap_mpfc.h5ad layer \
        target/release/examples/umap_tsv

Prints, for each: seconds, trustworthiness (sklearn, 15 neighbours), the share of each cell's
15 nearest neighbours in PCA space that stay among its 15 nearest in 2-D, and the kNN purity of
the label in 2-D (beside its purity in PCA space itself).
"""
import json, subprocess, sys, tempfile, time, os

import numpy as np
import scanpy as sc
import umap
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors


def knn(x, k):
    return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]


def purity(x, labels, k=15):
    nn = knn(x, k)
    return float((labels[nn] == labels[:, None]).mean())


def preserved(high, low, k=15):
    a, b = knn(high, k), knn(low, k)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b)]))


def main():
    path, label, ours_bin = sys.argv[1:4]
    a = sc.read_h5ad(path)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=min(50, a.n_vars - 1), random_state=0)  # osmFISH has 33 genes
    x = a.obsm["X_pca"].astype(np.float32)
    labels = np.asarray(a.obs[label].astype(str))
    out = {"cells": int(x.shape[0]), "label": label, "components": int(x.shape[1]),
           "label purity in PCA": purity(x, labels)}
    with tempfile.TemporaryDirectory() as d:
        inp, res = os.path.join(d, "x.tsv"), os.path.join(d, "xy.tsv")
        np.savetxt(inp, x, delimiter="\t", fmt="%.7g")
        t = time.time()
        subprocess.run([ours_bin, inp, res, "0"], check=True)
        ours_s = time.time() - t
        ours = np.loadtxt(res, delimiter="\t")
    t = time.time()
    theirs = umap.UMAP(n_neighbors=15, min_dist=0.5, random_state=0).fit_transform(x)
    theirs_s = time.time() - t
    for name, xy, s in [("sof (manifolds-rs)", ours, ours_s), ("umap-learn " + umap.__version__, theirs, theirs_s)]:
        out[name] = {
            "seconds (incl. I/O for sof)": round(s, 2),
            "trustworthiness@15": round(float(trustworthiness(x, xy, n_neighbors=15)), 4),
            "15-NN preserved": round(preserved(x, xy), 4),
            "label purity in 2-D": round(purity(xy, labels), 4),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
