use std::collections::BTreeMap;

use serde_json::Value;
use sof_io::h5ad::{H5adReader, XEncoding, read_h5ad};
use sof_io::loom::{LoomOptions, read_loom};
use sof_io::table::{TableOptions, read_tables};

use crate::shared;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// Shape, nnz, per-cell totals, names and label counts equal what Python anndata reported
/// (tests/it/anndata_expected.json, made by xtask/peers/h5ad_expected.py).
#[test]
fn every_shared_h5ad_matches_python_anndata() {
    let Some(shared) = shared() else { return };
    let expected: BTreeMap<String, Value> = serde_json::from_str(include_str!("anndata_expected.json")).unwrap();
    assert_eq!(expected.len(), 10, "expected numbers cover the ten shared .h5ad files");
    for (file, exp) in &expected {
        let a = read_h5ad(shared.join("data").join(file)).unwrap_or_else(|e| panic!("{e}"));
        let n = |k: &str| exp[k].as_u64().unwrap() as usize;
        let f = |k: &str| exp[k].as_f64().unwrap();
        assert_eq!((a.n_obs(), a.n_vars()), (n("n_obs"), n("n_vars")), "{file}: shape");
        assert_eq!(a.x.nnz_nonzero(), n("nnz"), "{file}: nnz");
        let totals = a.x.row_sums();
        assert!(
            close(totals.iter().sum(), f("total_sum")),
            "{file}: total {} vs {}",
            totals.iter().sum::<f64>(),
            f("total_sum")
        );
        for (i, t) in exp["first_totals"].as_array().unwrap().iter().enumerate() {
            assert!(close(totals[i], t.as_f64().unwrap()), "{file}: total of cell {i}");
        }
        assert!(close(*totals.last().unwrap(), f("last_total")), "{file}: last total");
        assert!(close(totals.iter().cloned().fold(f64::MIN, f64::max), f("max_total")), "{file}: max total");
        assert!(close(totals.iter().cloned().fold(f64::MAX, f64::min), f("min_total")), "{file}: min total");
        assert_eq!(a.obs_names()[0], exp["first_obs"].as_str().unwrap(), "{file}: first cell");
        assert_eq!(a.var_names()[0], exp["first_var"].as_str().unwrap(), "{file}: first gene");
        assert_eq!(a.var_names().last().unwrap(), exp["last_var"].as_str().unwrap(), "{file}: last gene");
        for (col, counts) in exp["cats"].as_object().unwrap() {
            let got = a.obs.get(col).unwrap_or_else(|| panic!("{file}: obs column {col} missing")).value_counts();
            let want: BTreeMap<String, usize> =
                counts.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize)).collect();
            assert_eq!(got, want, "{file}: label counts of {col}");
        }
        for (key, shape) in exp["obsm"].as_object().unwrap() {
            let arr = &a.obsm[key];
            let shape: Vec<usize> = shape.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(vec![arr.nrows(), arr.ncols()], shape, "{file}: obsm {key}");
        }
    }
}

/// Reading in row blocks gives the same matrix as reading at once, for dense and CSR storage.
#[test]
fn row_range_streaming_equals_whole_read() {
    let Some(shared) = shared() else { return };
    for (file, enc) in [("starmap_mpfc.h5ad", XEncoding::Dense), ("osmfish_sscortex.h5ad", XEncoding::Csr)] {
        let r = H5adReader::open(shared.join("data").join(file)).unwrap();
        assert_eq!(r.x_encoding(), enc);
        let whole = r.read_rows(0..r.n_obs()).unwrap();
        let mut streamed = sof_io::CsrMatrix::empty(r.n_vars());
        let mut start = 0;
        while start < r.n_obs() {
            let end = (start + 777).min(r.n_obs());
            streamed.append_rows(&r.read_rows(start..end).unwrap());
            start = end;
        }
        assert_eq!(streamed, whole, "{file}");
    }
}

/// The osmFISH .loom holds the same cells and counts as the .h5ad (cells matched by CellID).
#[test]
fn osmfish_loom_equals_h5ad() {
    let Some(shared) = shared() else { return };
    let h = read_h5ad(shared.join("data/osmfish_sscortex.h5ad")).unwrap();
    let l = read_loom(
        shared.join("data/osmfish_sscortex_original/osmFISH_SScortex_mouse_all_cells.loom"),
        &LoomOptions::default(),
    )
    .unwrap();
    assert_eq!((l.n_obs(), l.n_vars()), (6471, 33));
    assert_eq!(l.var_names(), h.var_names());
    let ids: Vec<String> = h.obs.get("CellID").unwrap().labels().into_iter().map(Option::unwrap).collect();
    assert_eq!(l.obs_names(), &ids[..], "same cells in the same order");
    assert_eq!(l.x.to_dense(), h.x.to_dense());
    assert_eq!(l.obs.get("Region").unwrap().value_counts(), h.obs.get("Region").unwrap().value_counts());
    let (ls, hs) = (l.spatial().unwrap(), h.spatial().unwrap());
    assert!(ls.iter().zip(hs.iter()).all(|(a, b)| (a - b).abs() < 1e-9));
}

/// The osmFISH tables (expression genes x cells, coordinates, metadata) read to the same counts
/// and coordinates as the .h5ad for every cell they contain.
#[test]
fn osmfish_tables_equal_h5ad() {
    let Some(shared) = shared() else { return };
    let dir = shared.join("data/osmfish_sscortex_original");
    let t = read_tables(
        dir.join("osmFISH_prep_expression.txt"),
        Some(&dir.join("osmFISH_prep_cell_coordinates.txt")),
        Some(&dir.join("osmFISH_prep_cell_metadata.txt")),
        &TableOptions::default(),
    )
    .unwrap();
    assert_eq!((t.n_obs(), t.n_vars()), (5328, 33));
    let h = read_h5ad(shared.join("data/osmfish_sscortex.h5ad")).unwrap();
    let pos: std::collections::HashMap<&str, usize> =
        h.obs_names().iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let rows: Vec<usize> = t.obs_names().iter().map(|n| pos[n.as_str()]).collect();
    let sub = h.select_obs(&rows);
    // Gene order may differ between the table and the .h5ad: compare by gene name.
    let gpos: Vec<usize> = t.var_names().iter().map(|g| h.var_names().iter().position(|x| x == g).unwrap()).collect();
    let (td, hd) = (t.x.to_dense(), sub.x.to_dense());
    for i in 0..t.n_obs() {
        for (j, &hj) in gpos.iter().enumerate() {
            assert_eq!(td[i * 33 + j], hd[i * 33 + hj], "cell {}, gene {}", t.obs_names()[i], t.var_names()[j]);
        }
    }
    let (ts, hs) = (t.spatial().unwrap(), sub.spatial().unwrap());
    assert!(ts.iter().zip(hs.iter()).all(|(a, b)| (a - b).abs() < 1e-6));
    assert_eq!(t.obs.get("ClusterID").unwrap().labels(), sub.obs.get("ClusterID").unwrap().labels());
}

/// X stored dense, CSR or CSC, with integer or float dtypes, reads to the same matrix, whole or
/// by row range (files written with the raw HDF5 API, as other writers lay them out).
#[test]
fn every_x_encoding_and_dtype_reads_the_same() {
    use hdf5::types::VarLenUnicode;
    // 4 cells x 3 genes: [[1,0,2],[0,0,0],[0,5,0],[7,0,9]].
    let dense = [1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 7.0, 0.0, 9.0];
    let dir = tempfile::tempdir().unwrap();
    let frame = |f: &hdf5::File, name: &str, ids: &[&str]| {
        let g = f.create_group(name).unwrap();
        let v: Vec<VarLenUnicode> = ids.iter().map(|s| s.parse().unwrap()).collect();
        g.new_dataset_builder().with_data(&v).create("_index").unwrap();
        g.new_attr::<VarLenUnicode>()
            .shape(())
            .create("_index")
            .unwrap()
            .write_scalar(&"_index".parse::<VarLenUnicode>().unwrap())
            .unwrap();
    };
    let sparse = |f: &hdf5::File, kind: &str, data: &[f64], indices: &[i64], indptr: &[i32]| {
        let x = f.create_group("X").unwrap();
        x.new_attr::<VarLenUnicode>()
            .shape(())
            .create("encoding-type")
            .unwrap()
            .write_scalar(&kind.parse::<VarLenUnicode>().unwrap())
            .unwrap();
        x.new_attr::<i64>().shape(2).create("shape").unwrap().write_raw(&[4i64, 3]).unwrap();
        x.new_dataset_builder().with_data(data).create("data").unwrap();
        x.new_dataset_builder().with_data(indices).create("indices").unwrap();
        x.new_dataset_builder().with_data(indptr).create("indptr").unwrap();
    };
    type Writer<'a> = Box<dyn Fn(&hdf5::File) + 'a>;
    let cases: Vec<(&str, Writer)> = vec![
        (
            "dense_int32",
            Box::new(|f: &hdf5::File| {
                let a = ndarray::Array2::from_shape_vec((4, 3), dense.iter().map(|&v| v as i32).collect()).unwrap();
                f.new_dataset_builder().with_data(&a).create("X").unwrap();
            }),
        ),
        (
            "dense_f64",
            Box::new(|f: &hdf5::File| {
                let a = ndarray::Array2::from_shape_vec((4, 3), dense.iter().map(|&v| f64::from(v)).collect()).unwrap();
                f.new_dataset_builder().with_data(&a).create("X").unwrap();
            }),
        ),
        (
            "csr_f64_i64",
            Box::new(move |f: &hdf5::File| {
                sparse(f, "csr_matrix", &[1.0, 2.0, 5.0, 7.0, 9.0], &[0, 2, 1, 0, 2], &[0, 2, 2, 3, 5])
            }),
        ),
        (
            "csc_f64_i64",
            Box::new(move |f: &hdf5::File| {
                sparse(f, "csc_matrix", &[1.0, 7.0, 5.0, 2.0, 9.0], &[0, 3, 2, 0, 3], &[0, 2, 3, 5])
            }),
        ),
    ];
    for (name, write) in cases {
        let path = dir.path().join(format!("{name}.h5ad"));
        {
            let f = hdf5::File::create(&path).unwrap();
            write(&f);
            frame(&f, "obs", &["a", "b", "c", "d"]);
            frame(&f, "var", &["G1", "G2", "G3"]);
        }
        let r = H5adReader::open(&path).unwrap();
        let whole = r.read().unwrap();
        assert_eq!(whole.x.to_dense(), dense, "{name}");
        let mut parts = r.read_rows(0..1).unwrap();
        parts.append_rows(&r.read_rows(1..3).unwrap());
        parts.append_rows(&r.read_rows(3..4).unwrap());
        assert_eq!(parts.to_dense(), dense, "{name}: by row range");
        assert_eq!(r.read_rows(2..4).unwrap().to_dense(), dense[6..], "{name}: a middle range");
    }
}
