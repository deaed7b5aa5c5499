"""Sanity check of ../shared/data/intestine_zonation_dissociated.h5ad: do its zone labels (and the
t-SNE coordinates stored beside them) belong to the expression rows they sit next to?

In the source study the t-SNE was computed from these cells' expression and the zones were
inferred from landmark genes, so both should track the expression: its leading principal
components should correlate with the t-SNE axes, and villus-tip / crypt landmark genes with the
zone. Prints one JSON line with those Spearman correlations.

Usage: python intestine_alignment.py <intestine_zonation_dissociated.h5ad>"""
import json, sys

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.stats import spearmanr

a = ad.read_h5ad(sys.argv[1])
X = sp.csr_matrix(a.X, dtype=np.float64)
total = np.asarray(X.sum(1)).ravel()
L = sp.diags(1e4 / total) @ X
L.data = np.log1p(L.data)
zone = a.obs["zone"].astype(str).astype(float).to_numpy()
t1, t2 = a.obs["tSNE_coordinate_1"].to_numpy(), a.obs["tSNE_coordinate_2"].to_numpy()
dense = L.toarray()
dense = dense[:, (dense > 0).mean(0) > 0.05]
dense -= dense.mean(0)
u, s, _ = np.linalg.svd(dense, full_matrices=False)
pcs = u[:, :5] * s[:5]
rho = lambda x, y: round(float(spearmanr(x, y)[0]), 3)
genes = {}
for g in ["Apoa4", "Ada", "Nt5e", "Slc28a2", "Reg1", "Reg3g", "Olfm4", "Lgr5", "Mki67"]:
    if g in a.var_names:
        genes[g] = rho(np.asarray(L[:, a.var_names.get_loc(g)].todense()).ravel(), zone)
out = {
    "zone_vs_tsne": [rho(zone, t1), rho(zone, t2)],
    "pc_vs_tsne_max_abs": max(abs(rho(pcs[:, i], t)) for i in range(5) for t in (t1, t2)),
    "pc_vs_zone_max_abs": max(abs(rho(pcs[:, i], zone)) for i in range(5)),
    "landmark_gene_vs_zone": genes,
}
print(json.dumps(out))
