"""Peer for `cargo xtask bench spatial`: squidpy's radius graph and neighbourhood composition on
the same cells, then a check that sof's graph (obsp['sof_connectivities']) has identical edges and
its composition the same proportions.

Usage: python spatial_squidpy.py <input.h5ad> <sof_output.h5ad> <radius> <section_key> <cell_type_key>
Prints one JSON line: {"compute_s", "peak_rss_mib", "edges", "identical_edges", "max_composition_diff"}."""
import json, resource, sys, time

import anndata as ad
import numpy as np
import scipy.sparse as sp
import squidpy as sq

inp, ours, radius, section_key, type_key = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
a = ad.read_h5ad(inp)
a.obs[section_key] = a.obs[section_key].astype("category")
t0 = time.perf_counter()
sq.gr.spatial_neighbors(a, coord_type="generic", radius=radius, library_key=section_key)
A = a.obsp["spatial_connectivities"].tocsr()
codes = a.obs[type_key].cat.codes.to_numpy()
onehot = sp.csr_matrix((np.ones(a.n_obs, dtype=np.float32), (np.arange(a.n_obs), codes)), shape=(a.n_obs, len(a.obs[type_key].cat.categories)))
counts = (A @ onehot).toarray()
compute_s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

b = ad.read_h5ad(ours, backed="r")
B = b.obsp["sof_connectivities"].tocsr() if hasattr(b.obsp["sof_connectivities"], "tocsr") else sp.csr_matrix(b.obsp["sof_connectivities"][:])
A.data[:] = 1
A.eliminate_zeros()
identical = A.shape == B.shape and (A != B).nnz == 0
tot = counts.sum(1, keepdims=True)
props = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
diff = float(np.abs(props - np.asarray(b.obsm["sof_composition"])).max())
print(json.dumps(dict(compute_s=compute_s, peak_rss_mib=peak, edges=int(A.nnz), identical_edges=bool(identical), max_composition_diff=diff)))
