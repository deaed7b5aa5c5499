"""Opens an .h5ad written by sof with Python anndata and checks what the writer claims.

Usage: python check_anndata.py <expectations.json>
The JSON: {"file": path, "original": path or null, "n_obs": int, "n_vars": int,
           "obsm": {key: [rows, cols, sum]}, "obs": {column: {label: count}},
           "obs_numeric": {column: sum}, "uns": {key: value}}
Exits non-zero, naming the first mismatch, if anything differs."""
import json, sys

import anndata as ad
import numpy as np
import scipy.sparse as sp


def dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


spec = json.load(open(sys.argv[1]))
a = ad.read_h5ad(spec["file"])
assert a.shape == (spec["n_obs"], spec["n_vars"]), f"shape {a.shape}"
if spec.get("original"):
    o = ad.read_h5ad(spec["original"])
    assert np.array_equal(dense(o.X), dense(a.X)), "X changed"
    for c in o.obs.columns:
        assert c in a.obs.columns, f"obs column {c} lost"
        assert o.obs[c].equals(a.obs[c]), f"obs column {c} changed"
    assert list(o.obs_names) == list(a.obs_names), "obs names changed"
    assert list(o.var_names) == list(a.var_names), "var names changed"
    for k in o.obsm:
        assert np.array_equal(np.asarray(o.obsm[k]), np.asarray(a.obsm[k])), f"obsm {k} changed"
for k, (r, c, s) in spec.get("obsm", {}).items():
    m = np.asarray(a.obsm[k])
    assert m.shape == (r, c), f"obsm {k} shape {m.shape}"
    assert abs(float(m.sum()) - s) <= 1e-3 * max(1.0, abs(s)), f"obsm {k} sum {m.sum()} vs {s}"
for col, counts in spec.get("obs", {}).items():
    got = {str(k): int(v) for k, v in a.obs[col].value_counts().items() if v > 0}
    assert got == counts, f"obs {col}: {got} vs {counts}"
for col, s in spec.get("obs_numeric", {}).items():
    got = float(a.obs[col].sum())
    assert abs(got - s) <= 1e-6 * max(1.0, abs(s)), f"obs {col} sum {got} vs {s}"
for k, v in spec.get("uns", {}).items():
    got = a.uns[k]
    got = got.tolist() if hasattr(got, "tolist") else got
    assert got == v, f"uns {k}: {got!r} vs {v!r}"
print(f"anndata {ad.__version__} opened {spec['file']}: all checks passed")
