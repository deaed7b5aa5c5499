"""A trained neighbourhood encoder, prototyped on frozen cell embeddings (test tool only).

Attention over a cell's K nearest neighbours in its own section (their X_sof plus an RBF of the
distance in units of the section's median nearest-neighbour distance, so rotating or shifting a
section changes nothing), four heads with learned queries, trained to predict the masked centre
cell from its neighbours alone: its own embedding (`emb`) or PCA-32 of its log-normalized
expression (`expr`). Scored like `sof probe`'s linear probe (standardized features, L2 logistic
regression, one section held out at a time) beside the parameter-free niche embedding
[X_sof, mean of the K neighbours' X_sof].

    sof demo --data starmap_mpfc.h5ad --cell-type-key cell_type --layer-key layer \
        --section-key section --technology starmap --output sm
    python xtask/experiments/niche_encoder.py sm/embedded/starmap_mpfc_targets.h5ad 20 expr

Needs torch, scikit-learn and anndata. Measured 2026-12-01 (STARmap, model of `sof demo`, seed 0):
layer macro F1 own+trained context 0.784 (emb) / 0.848 (expr) vs own+mean 0.850: no gain over
the mean, so `sof embed` keeps the parameter-free niche embedding.
"""
import sys
import anndata as ad, numpy as np, scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score
from sklearn.neighbors import NearestNeighbors

def load(path, label='layer'):
    a = ad.read_h5ad(path)
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1e-9) * 1e4)
    y = a.obs[label].astype(str).values
    sec = a.obs['section'].astype(str).values
    xy = a.obsm['spatial'][:, :2].astype(np.float64)
    return a, X, y, sec, xy

def knn(xy, sec, k):
    idx = np.zeros((len(xy), k), dtype=int); dist = np.zeros((len(xy), k))
    for s in np.unique(sec):
        w = np.where(sec == s)[0]
        nn = NearestNeighbors(n_neighbors=k + 1).fit(xy[w])
        d, i = nn.kneighbors(xy[w])
        idx[w] = w[i[:, 1:]]; dist[w] = d[:, 1:]
    return idx, dist

def probe(F, y, sec, pca_fit=None):
    f1s = []
    for s in np.unique(sec):
        tr, te = sec != s, sec == s
        G = F
        if pca_fit:
            p = PCA(pca_fit, random_state=0).fit(F[tr]); G = p.transform(F)
        sc = StandardScaler().fit(G[tr])
        m = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(G[tr]), y[tr])
        f1s.append(f1_score(y[te], m.predict(sc.transform(G[te])), average='macro'))
    return np.mean(f1s), np.round(f1s, 3)

def whiten_fit(F, rel=1e-9):
    mu, sd = F.mean(0), F.std(0); sd[sd < 1e-12] = 1
    Z = (F - mu) / sd
    cov = Z.T @ Z / (len(Z) - 1)
    v, V = np.linalg.eigh(cov)
    keep = v > rel * v.max()
    P = V[:, keep] / np.sqrt(v[keep])
    return lambda G: ((G - mu) / sd) @ P

def probe_w(F, y, sec, C=1.0, rel=1e-9):
    f1s = []
    for s in np.unique(sec):
        tr, te = sec != s, sec == s
        w = whiten_fit(F[tr], rel)
        m = LogisticRegression(max_iter=3000, C=C).fit(w(F[tr]), y[tr])
        f1s.append(f1_score(y[te], m.predict(w(F[te])), average='macro'))
    return np.mean(f1s), np.round(f1s, 3)

import torch, torch.nn as nn, numpy as np
torch.manual_seed(0); np.random.seed(0)
a, X, y, sec, xy = load(sys.argv[1])
E = a.obsm['X_sof'].astype(np.float32)
E = (E - E.mean(0)) / (E.std(0) + 1e-6)
K = int(sys.argv[2]) if len(sys.argv) > 2 else 20
target = sys.argv[3] if len(sys.argv) > 3 else 'emb'
idx, dist = knn(xy, sec, K)
scale = np.zeros(len(xy))
for s in np.unique(sec):
    w = sec == s; scale[w] = np.median(dist[w, 0])
R = (dist / scale[:, None]).astype(np.float32)
if target == 'expr':
    from sklearn.decomposition import PCA
    T = PCA(32, random_state=0).fit_transform(X).astype(np.float32); T /= T.std(0)
else:
    T = E
Et, It, Rt, Tt = map(torch.tensor, (E, idx, R, T))
d, h = E.shape[1], 64
class Enc(nn.Module):
    def __init__(s):
        super().__init__()
        s.centers = torch.linspace(0, float(R.max()), 16)
        s.val = nn.Sequential(nn.Linear(d + 16, h), nn.GELU(), nn.Linear(h, h))
        s.key = nn.Linear(d + 16, 4)   # 4 heads, learned queries folded in
        s.out = nn.Linear(h, h)
        s.norm = nn.LayerNorm(h)
    def forward(s, i):
        nb = It[i]; r = Rt[i]
        rbf = torch.exp(-((r[..., None] - s.centers) ** 2) / 0.5)
        z = torch.cat([Et[nb], rbf], -1)             # [B, K, d+16]
        v = s.val(z).view(len(i), K, 4, h // 4)
        att = torch.softmax(s.key(z), 1)              # [B, K, 4]
        c = (att[..., None] * v).sum(1).reshape(len(i), h)
        return s.norm(s.out(c))
enc = Enc(); head = nn.Linear(h, T.shape[1])
opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), 1e-3, weight_decay=1e-2)
n = len(E)
for ep in range(60):
    perm = torch.randperm(n)
    tot = 0
    for b in perm.split(128):
        loss = ((head(enc(b)) - Tt[b]) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item() * len(b)
    if ep % 20 == 19: print(ep, tot / n)
with torch.no_grad():
    C = enc(torch.arange(n)).numpy()
ME = E[idx].mean(1)
print('K', K, target)
print(' own+ctx', probe(np.hstack([E, C]), y, sec))
print(' ctx', probe(C, y, sec))
print(' own+mean', probe(np.hstack([E, ME]), y, sec))
# The probe before 2026-12-01 whitened its features; on [own, mean] that cost ~0.1 macro F1.
print(' own+mean, whitened probe (the old sof probe)', probe_w(np.hstack([E, ME]), y, sec))
