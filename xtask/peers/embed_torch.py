"""PyTorch peer for `cargo xtask bench model`: Nicheformer's encoder (token + learned positional
embeddings, post-LN nn.TransformerEncoderLayer with ReLU) with seeded random weights, saved as a
reference-layout Lightning-style checkpoint (state_dict + hyper_parameters) that `sof` imports, then
timed on generated token sequences: cell embeddings (mean of the last layer over gene positions)
in batches, eager mode, inference_mode.

The tokens follow a formula both sides compute (no file exchange): cell c, position j >= 3 holds
30 + (c * 7919 + j * 104729) % n_genes; positions 0..3 hold the context tokens 5, 10, 15.

Prints one JSON line: cells per second and the first cells' embeddings (for the parity check).
"""

import argparse
import json
import time

import torch

from pretrain_torch import N_CONTEXT, N_SPECIAL, PAD, Encoder as PretrainEncoder


class Encoder(PretrainEncoder):
    """The same encoder as the pretraining peer, plus PAD-excluded mean pooling."""

    def embed(self, tokens):
        h = self.forward(tokens)
        keep = (tokens[:, N_CONTEXT:] != PAD).unsqueeze(-1).to(h.dtype)
        return (h[:, N_CONTEXT:] * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def tokens(first, count, length, n_genes):
    c = torch.arange(first, first + count, dtype=torch.int64).unsqueeze(1)
    j = torch.arange(length, dtype=torch.int64).unsqueeze(0)
    t = N_SPECIAL + (c * 7919 + j * 104729) % n_genes
    t[:, 0], t[:, 1], t[:, 2] = 5, 10, 15
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="where to write the .ckpt")
    ap.add_argument("--n-genes", type=int, default=20310)
    ap.add_argument("--context", type=int, default=1500)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ff", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--length", type=int, required=True, help="tokens per cell, context tokens included")
    ap.add_argument("--cells", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    n_tokens = a.n_genes + N_SPECIAL
    model = Encoder(n_tokens + 5, n_tokens, a.context, a.d_model, a.heads, a.ff, a.layers)
    with torch.no_grad():
        for name, p in model.named_parameters():  # non-trivial LayerNorm and biases too
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            elif p.dim() == 1:
                p.normal_(0.0, 0.05)
    model.eval()
    hyper = {"dim_model": a.d_model, "nheads": a.heads, "dim_feedforward": a.ff, "nlayers": a.layers,
             "dropout": 0.0, "n_genes": a.n_genes, "aux_tokens": N_SPECIAL, "context_length": a.context,
             "layer_norm_eps": 1e-12, "n_tokens": n_tokens}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hyper}, a.checkpoint)
    with torch.inference_mode():
        model.embed(tokens(0, min(a.batch, a.cells), a.length, a.n_genes))  # warm-up
        first = None
        start = time.perf_counter()
        for s in range(0, a.cells, a.batch):
            e = model.embed(tokens(s, min(a.batch, a.cells - s), a.length, a.n_genes))
            if first is None:
                first = e[:4, :8].tolist()
        secs = time.perf_counter() - start
    print(json.dumps({"cells_per_second": a.cells / secs, "seconds": secs, "first": first,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
