//! Embedding throughput of a reference-layout checkpoint on generated tokens, CPU backend; the
//! Rust side of `cargo xtask bench model` (its PyTorch peer is xtask/peers/embed_torch.py and
//! computes the same tokens from the same formula).
//!
//! Usage: bench_embed <model.ckpt> <length> <cells> <batch>
//! Prints one JSON line: cells per second and the first cells' embeddings.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use sof_model::Pooling;

/// Cell `c`, position `j`: context tokens 5, 10, 15, then 30 + (c * 7919 + j * 104729) % n_genes.
fn tokens(first: usize, count: usize, length: usize, n_genes: usize, device: &Device) -> Tensor<2, Int> {
    let mut flat = Vec::with_capacity(count * length);
    for c in first..first + count {
        for j in 0..length {
            flat.push(match j {
                0 => 5,
                1 => 10,
                2 => 15,
                _ => (30 + (c * 7919 + j * 104_729) % n_genes) as i64,
            });
        }
    }
    Tensor::from_data(TensorData::new(flat, [count, length]), device)
}

#[allow(clippy::print_stdout)] // a benchmark tool: its result line is the output
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: bench_embed <model.ckpt> <length> <cells> <batch>".into());
    }
    let (length, cells, batch): (usize, usize, usize) = (args[2].parse()?, args[3].parse()?, args[4].parse()?);
    let device = Device::flex();
    let (model, cfg) = sof_model::import::load_reference(Path::new(&args[1]), None, &device)?;
    let n_genes = cfg.n_tokens - 30;
    let run = |first: usize, count: usize| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let e = model.embed(tokens(first, count, length, n_genes, &device), Pooling::PadExcluded);
        Ok(e.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?)
    };
    run(0, batch.min(cells))?; // warm-up
    let start = Instant::now();
    let mut first = None;
    for s in (0..cells).step_by(batch) {
        let e = run(s, batch.min(cells - s))?;
        if first.is_none() {
            let rows: Vec<Vec<f32>> = e.chunks(cfg.d_model).take(4).map(|r| r[..8].to_vec()).collect();
            first = Some(rows);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "cells_per_second": cells as f64 / secs, "seconds": secs, "first": first }));
    Ok(())
}
