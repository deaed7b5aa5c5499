//! `cargo run --release -p sof-tasks --example umap_tsv -- in.tsv out.tsv [seed]`: the 2-D UMAP
//! of a tab-separated matrix (one row per cell, no header), for comparing [`sof_tasks::view::umap`]
//! with Python's umap-learn on the same input (xtask/peers/umap_compare.py).

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output) = match (args.get(1), args.get(2)) {
        (Some(i), Some(o)) => (i, o),
        _ => return Err("usage: umap_tsv in.tsv out.tsv [seed]".into()),
    };
    let seed = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let text = std::fs::read_to_string(input)?;
    let rows: Vec<Vec<f32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(|v| v.trim().parse::<f32>()).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    let x = ndarray::Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect())?;
    let start = std::time::Instant::now();
    let xy = sof_tasks::view::umap(x.view(), &sof_tasks::view::UmapSettings { seed, ..Default::default() })?;
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    for r in xy.rows() {
        writeln!(out, "{}\t{}", r[0], r[1])?;
    }
    writeln!(std::io::stderr(), "umap: {n} x {d} in {secs:.2} s")?;
    Ok(())
}
