"""PyTorch peer for `cargo xtask bench pretrain`: the same encoder (Nicheformer's: token +
learned positional embeddings, post-LN nn.TransformerEncoderLayer with ReLU, MLM head), the same
masked-token step (15% / 80-10-10, head only at the chosen positions, AdamW, per-tensor gradient
clipping) and the same batch size, on sequences read from the same sof corpus shards.

Prints one JSON line: {"tokens_per_second": median over logging windows after warm-up, ...}.
"""

import argparse
import json
import math
import pathlib
import statistics
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

PAD, MASK, N_SPECIAL, N_CONTEXT = 1, 0, 30, 3


class Encoder(nn.Module):
    def __init__(self, rows, n_tokens, context, d, heads, ff, layers):
        super().__init__()
        self.embeddings = nn.Embedding(rows, d, padding_idx=PAD)
        self.positional_embedding = nn.Embedding(context, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="relu", batch_first=True,
                                           layer_norm_eps=1e-12, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier_head = nn.Linear(d, n_tokens)

    def forward(self, tokens):
        pos = self.positional_embedding.weight[: tokens.shape[1]].unsqueeze(0)
        return self.encoder(self.embeddings(tokens) + pos, src_key_padding_mask=tokens == PAD)


def load(corpora, context):
    seqs = []
    for c in corpora:
        c = pathlib.Path(c)
        m = json.loads((c / "manifest.json").read_text())
        ctx = list(m["context_tokens"])
        for shard in m["shards"]:
            for t in pq.read_table(c / shard["file"], columns=["tokens"]).column("tokens").to_pylist():
                seqs.append(np.asarray((ctx + t)[:context], dtype=np.int64))
    return seqs


def mask(batch, n_tokens, rng):
    labels = np.full(batch.shape, -100, dtype=np.int64)
    eligible = batch != PAD
    eligible[:, :N_CONTEXT] = False
    chosen = eligible & (rng.random(batch.shape) < 0.15)
    labels[chosen] = batch[chosen]
    u = rng.random(batch.shape)
    batch = batch.copy()
    batch[chosen & (u < 0.8)] = MASK
    rand = chosen & (u >= 0.8) & (u < 0.9)
    batch[rand] = rng.integers(N_SPECIAL, n_tokens, size=int(rand.sum()))
    return batch, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", action="append", required=True)
    ap.add_argument("--n-tokens", type=int, required=True)
    ap.add_argument("--context", type=int, required=True)
    ap.add_argument("--d-model", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--ff", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    seqs = load(a.corpus, a.context)
    model = Encoder(a.n_tokens + 5, a.n_tokens, a.context, a.d_model, a.heads, a.ff, a.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-8)
    windows, tokens, t0, losses = [], 0, time.perf_counter(), []
    for step in range(1, a.steps + 1):
        pick = rng.integers(0, len(seqs), size=a.batch)
        length = max(len(seqs[i]) for i in pick)
        batch = np.full((a.batch, length), PAD, dtype=np.int64)
        for r, i in enumerate(pick):
            batch[r, : len(seqs[i])] = seqs[i]
        tokens += int((batch != PAD).sum())
        x, labels = mask(batch, a.n_tokens, rng)
        x, labels = torch.from_numpy(x), torch.from_numpy(labels)
        hidden = model(x)
        chosen = labels.reshape(-1) != -100
        logits = model.classifier_head(hidden.reshape(-1, hidden.shape[-1])[chosen])
        loss = nn.functional.cross_entropy(logits, labels.reshape(-1)[chosen])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():  # per-tensor clipping, as burn's
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], 1.0)
        opt.step()
        losses.append(loss.item())
        if step % a.log_every == 0:
            now = time.perf_counter()
            windows.append(tokens / (now - t0))
            tokens, t0 = 0, now
    steady = windows[max(1, len(windows) // 10):] or windows
    print(json.dumps({
        "tokens_per_second": statistics.median(steady),
        "windows": len(windows),
        "first_loss": losses[0],
        "last_loss": statistics.mean(losses[-10:]),
        "threads": a.threads,
        "torch": torch.__version__,
        "initial_loss_expected": math.log(a.n_tokens),
    }))


if __name__ == "__main__":
    main()
