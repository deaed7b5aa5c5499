//! Small typed helpers over `hdf5` used by the .h5ad and .loom code: strings of any HDF5 string
//! type, numeric columns of any dtype, and anndata's encoding attributes.

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Container, Location};

use crate::frame::Column;

/// Reads a 1-d string dataset or attribute, whatever HDF5 string type it was written with.
/// A zero-sized non-string array (anndata writes an empty `column-order` as float64) reads as
/// no strings.
pub(crate) fn read_strings(c: &Container) -> hdf5::Result<Vec<String>> {
    let desc = c.dtype()?.to_descriptor()?;
    let out = match desc {
        TypeDescriptor::VarLenUnicode => c
            .read_raw::<VarLenUnicode>()?
            .iter()
            .enumerate()
            .map(|(i, s)| utf8(s.as_bytes(), i))
            .collect::<Result<_, _>>()?,
        TypeDescriptor::VarLenAscii => c
            .read_raw::<VarLenAscii>()?
            .iter()
            .enumerate()
            .map(|(i, s)| utf8(s.as_bytes(), i))
            .collect::<Result<_, _>>()?,
        TypeDescriptor::FixedAscii(n) => fixed_ascii(c, n)?,
        TypeDescriptor::FixedUnicode(n) => fixed_unicode(c, n)?,
        _ if c.size() == 0 => Vec::new(),
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => {
            c.read_raw::<i64>()?.iter().map(|v| v.to_string()).collect()
        }
        TypeDescriptor::Float(_) => c.read_raw::<f64>()?.iter().map(|v| v.to_string()).collect(),
        TypeDescriptor::Boolean => c.read_raw::<bool>()?.iter().map(|v| v.to_string()).collect(),
        other => return Err(format!("expected strings, found HDF5 type {other}").into()),
    };
    Ok(out)
}

/// The `i`-th string, checked: HDF5 stores bytes, and the `hdf5` crate's `as_str` does not check
/// that they are UTF-8 (names that are not would reach vocab.tsv and Parquet as invalid text).
fn utf8(bytes: &[u8], i: usize) -> hdf5::Result<String> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
        format!(
            "string {i} is not valid UTF-8 ({e}; bytes {:02x?}); rewrite the names as UTF-8 text (anndata cannot read them either)",
            &bytes[..bytes.len().min(16)]
        )
        .into()
    })
}

macro_rules! fixed_reader {
    ($name:ident, $ty:ident) => {
        fn $name(c: &Container, n: usize) -> hdf5::Result<Vec<String>> {
            // HDF5 converts between fixed-length string sizes, so read into the next bucket.
            fn go<const N: usize>(c: &Container) -> hdf5::Result<Vec<String>> {
                c.read_raw::<$ty<N>>()?.iter().enumerate().map(|(i, s)| utf8(s.as_bytes(), i)).collect()
            }
            match n {
                0..=16 => go::<16>(c),
                17..=64 => go::<64>(c),
                65..=256 => go::<256>(c),
                257..=4096 => go::<4096>(c),
                _ => Err(format!("fixed-length strings of {n} bytes are not supported").into()),
            }
        }
    };
}
fixed_reader!(fixed_ascii, FixedAscii);
fixed_reader!(fixed_unicode, FixedUnicode);

/// Reads a scalar string attribute, if present.
pub(crate) fn str_attr(loc: &Location, name: &str) -> Option<String> {
    let attr = loc.attr(name).ok()?;
    read_strings(&attr).ok()?.into_iter().next()
}

/// Reads a 1-d numeric, boolean or string dataset as an annotation column.
pub(crate) fn read_plain_column(c: &Container) -> hdf5::Result<Column> {
    Ok(match c.dtype()?.to_descriptor()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => Column::Int(c.read_raw()?),
        TypeDescriptor::Float(_) => Column::Float(c.read_raw()?),
        TypeDescriptor::Boolean => Column::Bool(c.read_raw()?),
        _ => Column::Str(read_strings(c)?),
    })
}

/// Sets (replacing) a scalar UTF-8 string attribute.
pub(crate) fn set_str_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    if loc.attr(name).is_ok() {
        loc.delete_attr(name)?;
    }
    let v: VarLenUnicode = value.parse().map_err(|e| format!("{e}"))?;
    loc.new_attr::<VarLenUnicode>().shape(()).create(name)?.write_scalar(&v)
}

/// Sets (replacing) a 1-d UTF-8 string array attribute.
pub(crate) fn set_str_array_attr(loc: &Location, name: &str, values: &[String]) -> hdf5::Result<()> {
    if loc.attr(name).is_ok() {
        loc.delete_attr(name)?;
    }
    let v = to_vlen(values)?;
    loc.new_attr::<VarLenUnicode>().shape(v.len()).create(name)?.write_raw(&v)
}

pub(crate) fn to_vlen(values: &[String]) -> hdf5::Result<Vec<VarLenUnicode>> {
    values.iter().map(|s| s.parse::<VarLenUnicode>().map_err(|e| hdf5::Error::from(format!("{e}")))).collect()
}

/// Sets anndata's `encoding-type` and `encoding-version` attributes.
pub(crate) fn set_encoding(loc: &Location, kind: &str, version: &str) -> hdf5::Result<()> {
    set_str_attr(loc, "encoding-type", kind)?;
    set_str_attr(loc, "encoding-version", version)
}
