"""Writes what Python anndata reports for every .h5ad in a data folder (the sof-io reader test
compares against it). Usage: python h5ad_expected.py <data-dir> > anndata_expected.json"""
import glob, json, os, sys

import anndata as ad
import numpy as np
import scipy.sparse as sp

out = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.h5ad"))):
    a = ad.read_h5ad(f)
    X = a.X
    if sp.issparse(X):
        X = X.tocsr()
        nnz = int((X.data != 0).sum())
        tot = np.asarray(X.sum(1)).ravel()
    else:
        nnz = int((X != 0).sum())
        tot = X.sum(1)
    tot = tot.astype(np.float64)
    cats = {c: {str(k): int(v) for k, v in a.obs[c].value_counts().items()}
            for c in a.obs.columns if hasattr(a.obs[c], "cat")}
    out[os.path.basename(f)] = dict(
        n_obs=a.n_obs, n_vars=a.n_vars, nnz=nnz, total_sum=float(tot.sum()),
        first_totals=[float(x) for x in tot[:3]], last_total=float(tot[-1]),
        max_total=float(tot.max()), min_total=float(tot.min()),
        first_obs=str(a.obs_names[0]), first_var=str(a.var_names[0]), last_var=str(a.var_names[-1]),
        cats=cats, obsm={k: list(v.shape) for k, v in a.obsm.items()})
print(json.dumps(out, indent=1, sort_keys=True))
