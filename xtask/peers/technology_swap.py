"""What keeps technologies apart in the demo's embedding: the cells' genes or their context tokens?

Takes a finished `sof demo` folder (its view.h5ad holds every sampled cell's counts over the genes
all samples measure) and re-embeds those cells with the demo's model: each sample with its own
technology and modality, then MERFISH cells tokenized as Xenium, then dissociated cells tokenized
as spatial MERFISH, then every sample with its context hidden (`--hide-context`: the assay and
modality tokens MASK, which a model pretrained with `--context-dropout` has learned). Prints the kNN purity (15 neighbours, scikit-learn) of technology and layer
for each, beside the demo's own X_sof.

    python xtask/peers/technology_swap.py sof-demo target/release/sof
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import anndata
import numpy as np
from sklearn.neighbors import NearestNeighbors


def purity(x, labels, k=15, queries=2000, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), min(queries, len(x)), replace=False)
    _, ind = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x[idx])
    observed = np.mean([(labels[ind[r, 1:]] == labels[i]).mean() for r, i in enumerate(idx)])
    _, c = np.unique(labels, return_counts=True)
    return observed, (c * (c - 1)).sum() / (len(labels) * (len(labels) - 1))


def report(name, x, tech, layer):
    (t, te), (l, le) = purity(x, tech), purity(x, layer)
    print(f"{name:58s} technology {t:.3f} (random {te:.3f})  layer {l:.3f} (random {le:.3f})")


def main(demo, sof):
    demo = Path(demo)
    view = anndata.read_h5ad(demo / "view.h5ad")
    tech = view.obs["technology"].astype(str).values
    layer = view.obs["layer"].astype(str).values
    report("demo X_sof (each sample over its own panel)", view.obsm["X_sof"], tech, layer)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {}
        for t in np.unique(tech):
            part = view[tech == t].copy()
            part.obsm.clear()
            part.uns.clear()
            part.write_h5ad(tmp / f"{t}.h5ad")
            rows[t] = np.flatnonzero(tech == t)

        def embed(source, technology, modality, hidden):
            out = tmp / f"{source}_as_{technology}{'_hidden' if hidden else ''}.h5ad"
            if not out.exists():
                subprocess.run(
                    [sof, "-q", "embed", "--checkpoint", demo / "model_run", "--input", tmp / f"{source}.h5ad",
                     "--output", out, "--technology", technology, "--modality", modality, "--species", "mouse",
                     "--vocab", demo / "vocab.tsv", "--no-niche"] + (["--hide-context"] if hidden else []),
                    check=True, stdout=subprocess.DEVNULL)
            return anndata.read_h5ad(out).obsm["X_sof"]

        def joined(tokenized_as, hidden=False):
            x = np.zeros((view.n_obs, view.obsm["X_sof"].shape[1]), dtype=np.float32)
            for t, r in rows.items():
                x[r] = embed(t, *tokenized_as.get(t, (t, "dissociated" if t == "dissociated" else "spatial")), hidden)
            return x

        report("X_sof of the shared genes only", joined({}), tech, layer)
        report("shared genes; MERFISH cells tokenized as Xenium", joined({"merfish": ("xenium", "spatial")}), tech, layer)
        report("shared genes; dissociated cells tokenized as spatial MERFISH",
               joined({"dissociated": ("merfish", "spatial")}), tech, layer)
        report("shared genes; every sample's context hidden", joined({}, hidden=True), tech, layer)


if __name__ == "__main__":
    main(*sys.argv[1:3])
