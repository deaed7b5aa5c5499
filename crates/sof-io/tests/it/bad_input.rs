//! Every bad input gets an error naming the file, the field and the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue, read_h5ad, write_h5ad};
use sof_io::table::{TableOptions, read_tables};
use sof_io::{AnnData, Column, CsrMatrix, Frame};

use crate::shared;

fn check(result: Result<impl std::fmt::Debug, sof_io::Error>, path: &Path, needles: &[&str]) {
    let msg = result.expect_err("bad input must be an error").to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks '{n}': {msg}");
    }
}

fn toy(values: Vec<f32>, genes: &[&str]) -> AnnData {
    let n = genes.len();
    let rows = values.len() / n;
    AnnData {
        x: CsrMatrix::from_dense(rows, n, &values),
        obs: Frame::new((0..rows).map(|i| format!("c{i}")).collect()),
        var: Frame::new(genes.iter().map(|g| g.to_string()).collect()),
        obsm: BTreeMap::new(),
    }
}

/// Writes a file with the raw hdf5 API, so tests can build any broken layout.
fn h5(path: &Path, build: impl FnOnce(&hdf5::File)) -> PathBuf {
    let f = hdf5::File::create(path).unwrap();
    build(&f);
    path.to_path_buf()
}

/// An `X` group tagged as a CSR matrix of `shape`, for the test to fill.
fn csr_group(f: &hdf5::File, shape: [i64; 2]) -> hdf5::Group {
    let x = f.create_group("X").unwrap();
    x.new_attr::<hdf5::types::VarLenUnicode>()
        .shape(())
        .create("encoding-type")
        .unwrap()
        .write_scalar(&"csr_matrix".parse::<hdf5::types::VarLenUnicode>().unwrap())
        .unwrap();
    x.new_attr::<i64>().shape(2).create("shape").unwrap().write_raw(&shape).unwrap();
    x
}

#[test]
fn missing_file_empty_file_and_not_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.h5ad");
    check(read_h5ad(&missing), &missing, &["No such file"]);
    let empty = dir.path().join("empty.h5ad");
    std::fs::write(&empty, b"").unwrap();
    check(read_h5ad(&empty), &empty, &["empty (0 bytes)"]);
    let text = dir.path().join("text.h5ad");
    std::fs::write(&text, b"cell,gene\n1,2\n").unwrap();
    check(read_h5ad(&text), &text, &["cannot open as an HDF5 file", "truncated or corrupt"]);
}

#[test]
fn truncated_real_file() {
    let Some(shared) = shared() else { return };
    let bytes = std::fs::read(shared.join("data/osmfish_sscortex.h5ad")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.h5ad");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    check(read_h5ad(&cut), &cut, &["truncated or corrupt"]);
}

#[test]
fn missing_x_and_missing_obsm_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = h5(&dir.path().join("nox.h5ad"), |f| {
        f.create_group("obs").unwrap();
    });
    check(read_h5ad(&p), &p, &["'X' is missing"]);
    let ok = dir.path().join("ok.h5ad");
    write_h5ad(&ok, &toy(vec![1.0, 2.0], &["A", "B"]), &BTreeMap::new()).unwrap();
    check(H5adReader::open(&ok).unwrap().obsm("spatial"), &ok, &["obsm/spatial", "missing"]);
}

#[test]
fn nan_inf_and_negative_values() {
    let dir = tempfile::tempdir().unwrap();
    for (name, v, word) in [("nan", f32::NAN, "NaN"), ("inf", f32::INFINITY, "infinite"), ("neg", -3.0, "negative")] {
        let p = h5(&dir.path().join(format!("{name}.h5ad")), |f| {
            f.new_dataset_builder().with_data(&ndarray::arr2(&[[1.0f32, v], [0.0, 2.0]])).create("X").unwrap();
        });
        let r = H5adReader::open(&p).unwrap();
        check(r.read_rows(0..2), &p, &["'X'", word, "cell 0, gene 1"]);
    }
}

#[test]
fn shape_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    // obs with 3 cells for a 2-cell X.
    let p = dir.path().join("obs.h5ad");
    write_h5ad(&p, &toy(vec![1.0, 2.0, 3.0, 4.0], &["A", "B"]), &BTreeMap::new()).unwrap();
    {
        let f = hdf5::File::open_rw(&p).unwrap();
        let obs = f.group("obs").unwrap();
        obs.unlink("_index").unwrap();
        let names: Vec<hdf5::types::VarLenUnicode> = ["a", "b", "c"].iter().map(|s| s.parse().unwrap()).collect();
        obs.new_dataset_builder().with_data(&names).create("_index").unwrap();
    }
    check(read_h5ad(&p), &p, &["'obs'", "3 cells", "2 rows"]);
    // CSR indptr of the wrong length.
    let p = h5(&dir.path().join("indptr.h5ad"), |f| {
        let x = csr_group(f, [3, 2]);
        x.new_dataset_builder().with_data(&[1.0f32]).create("data").unwrap();
        x.new_dataset_builder().with_data(&[0i32]).create("indices").unwrap();
        x.new_dataset_builder().with_data(&[0i64, 1]).create("indptr").unwrap();
    });
    check(H5adReader::open(&p), &p, &["X/indptr", "2 entries, expected 4"]);
    // obsm with the wrong number of rows is refused by the writer.
    let mut a = toy(vec![1.0, 2.0], &["A", "B"]);
    a.obsm.insert("spatial".into(), ndarray::Array2::zeros((5, 2)));
    let p = dir.path().join("obsm.h5ad");
    check(write_h5ad(&p, &a, &BTreeMap::new()), &p, &["obsm/spatial", "5 rows"]);
}

/// Column indices outside the matrix are errors naming the entry, whatever integer type the
/// file stores them as (int32 is read as it is, wider types are converted).
#[test]
fn column_indices_outside_the_matrix() {
    let dir = tempfile::tempdir().unwrap();
    fn csr(path: &Path, indices: impl FnOnce(&hdf5::Group)) -> PathBuf {
        h5(path, |f| {
            let x = csr_group(f, [2, 3]);
            x.new_dataset_builder().with_data(&[1.0f32, 2.0, 3.0]).create("data").unwrap();
            indices(&x);
            x.new_dataset_builder().with_data(&[0i64, 2, 3]).create("indptr").unwrap();
        })
    }
    // Indices 0, 2, 1 (valid) or with one bad entry, in the integer type the name says.
    let write = |x: &hdf5::Group, name: &str| {
        let b = x.new_dataset_builder();
        let made = match name {
            "i32" => b.with_data(&[0i32, 2, 1]).create("indices"),
            "u16" => b.with_data(&[0u16, 2, 1]).create("indices"),
            "i64" => b.with_data(&[0i64, 2, 1]).create("indices"),
            "i32neg" => b.with_data(&[0i32, 1, -4]).create("indices"),
            "i32big" => b.with_data(&[0i32, 3, 1]).create("indices"),
            "u32big" => b.with_data(&[0u32, 1, u32::MAX]).create("indices"),
            "i64neg" => b.with_data(&[0i64, -1, 2]).create("indices"),
            _ => b.with_data(&[0u16, 1, 7]).create("indices"),
        };
        made.unwrap();
    };
    for (name, says) in
        [("i32neg", "is -4"), ("i32big", "is 3"), ("u32big", "entry 2"), ("i64neg", "is -1"), ("u16big", "is 7")]
    {
        let p = csr(&dir.path().join(format!("{name}.h5ad")), |x| write(x, name));
        check(H5adReader::open(&p).unwrap().read_rows(0..2), &p, &["X/indices", says, "outside 0..3"]);
    }
    // The same layouts with valid indices read back the same matrix.
    for name in ["i32", "u16", "i64"] {
        let p = csr(&dir.path().join(format!("{name}.h5ad")), |x| write(x, name));
        let m = H5adReader::open(&p).unwrap().read_rows(0..2).unwrap();
        assert_eq!(m.to_dense(), vec![1.0, 0.0, 2.0, 0.0, 3.0, 0.0], "{name}");
    }
}

/// Gene names whose bytes are not UTF-8 are an error naming the field and the string, not text
/// passed on unchecked.
#[test]
#[allow(unsafe_code)]
fn gene_names_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.h5ad");
    write_h5ad(&p, &toy(vec![1.0, 2.0], &["A", "B"]), &BTreeMap::new()).unwrap();
    {
        let f = hdf5::File::open_rw(&p).unwrap();
        let var = f.group("var").unwrap();
        var.unlink("_index").unwrap();
        // SAFETY: from_ascii_unchecked only skips the ASCII check; the bytes are plain bytes
        // (0xe9 is 'é' in Latin-1), no &str is made from them.
        let names = [hdf5::types::VarLenAscii::from_ascii("A").unwrap(), unsafe {
            hdf5::types::VarLenAscii::from_ascii_unchecked(b"Caf\xe9")
        }];
        var.new_dataset_builder().with_data(&names).create("_index").unwrap();
    }
    check(read_h5ad(&p), &p, &["var", "string 1 is not valid UTF-8", "UTF-8 text"]);
    check(H5adReader::open(&p).and_then(|r| r.var()), &p, &["not valid UTF-8"]);
}

/// A folder given as input, and an output folder that cannot be written, are named as such.
#[test]
fn folders_in_and_read_only_out() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("run.h5ad");
    std::fs::create_dir(&folder).unwrap();
    check(H5adReader::open(&folder), &folder, &["folder, not a file"]);
    let p = dir.path().join("ok.h5ad");
    write_h5ad(&p, &toy(vec![1.0, 2.0], &["A", "B"]), &BTreeMap::new()).unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    let out = ro.join("out.h5ad");
    // Root ignores permissions (CI runs as root): only check where the folder is really read-only.
    if std::fs::write(ro.join("probe"), b"").is_err() {
        let e = H5adEditor::copy_of(&p, &out).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(&out.display().to_string()), "names the output: {e}");
    }
}

#[test]
fn duplicate_gene_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.h5ad");
    check(
        write_h5ad(&p, &toy(vec![1.0, 2.0, 3.0], &["Gad1", "Sst", "Gad1"]), &BTreeMap::new()),
        &p,
        &["duplicate gene name 'Gad1'", "positions 0 and 2", "var_names_make_unique"],
    );
}

#[test]
fn bad_tables() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("expr.tsv");
    std::fs::write(&e, "c1\tc2\nGad1\t1\tx\n").unwrap();
    check(read_tables(&e, None, None, &TableOptions::default()), &e, &["'x' is not a number"]);
    std::fs::write(&e, "c1\tc2\nGad1\t1\t2\nSst\t1\n").unwrap();
    check(read_tables(&e, None, None, &TableOptions::default()), &e, &["line 3", "has 2 fields, expected 3"]);
    std::fs::write(&e, "c1\tc2\nGad1\t1\t2\n").unwrap();
    let c = dir.path().join("coords.tsv");
    std::fs::write(&c, "ID\tX\tY\nc1\t0\t0\n").unwrap();
    check(read_tables(&e, Some(&c), None, &TableOptions::default()), &c, &["no row for cell 'c2'"]);
    std::fs::write(&e, "").unwrap();
    check(read_tables(&e, None, None, &TableOptions::default()), &e, &["empty"]);
}

#[test]
fn editor_refuses_wrong_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.h5ad");
    write_h5ad(&p, &toy(vec![1.0, 2.0, 3.0, 4.0], &["A", "B"]), &BTreeMap::new()).unwrap();
    let out = dir.path().join("out.h5ad");
    let mut e = H5adEditor::copy_of(&p, &out).unwrap();
    check(e.put_obs("pred", &Column::Int(vec![1, 2, 3])), &out, &["obs/pred", "3 rows", "2 cells"]);
    e.put_uns("x", &UnsValue::Int(1)).unwrap();
    drop(e);
    assert!(!out.exists(), "an uncommitted edit leaves nothing behind");
}
