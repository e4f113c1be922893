//! NumPy `.npy` files: the model-input tensors handed to a training script.
//!
//! This module owns writing arrays in NumPy's format version 1.0 (little-endian, C order), so
//! that `numpy.load` reads exactly the bytes the agent would feed tract. A [`NpyWriter`] streams
//! rows of `f32` without knowing their count in advance: it reserves a fixed-size header and
//! rewrites it with the final shape when finished.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes reserved for the magic string, the header length and the header text.
const HEADER_BYTES: usize = 128;

/// Streams `f32` rows of a fixed shape into a `.npy` file.
pub struct NpyWriter {
    file: BufWriter<File>,
    row_shape: Vec<usize>,
    row_len: usize,
    rows: usize,
}

impl NpyWriter {
    /// Creates `path` for rows of shape `row_shape` (the array's shape after its first axis).
    pub fn create(path: &Path, row_shape: &[usize]) -> std::io::Result<Self> {
        let mut file = BufWriter::new(File::create(path)?);
        file.write_all(&header("<f4", &shape_with(0, row_shape))?)?;
        Ok(NpyWriter {
            file,
            row_shape: row_shape.to_vec(),
            row_len: row_shape.iter().product(),
            rows: 0,
        })
    }

    /// Appends one row; its length must be the product of the row shape.
    pub fn push(&mut self, values: &[f32]) -> std::io::Result<()> {
        if values.len() != self.row_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "row of {} values, the array's rows have {}",
                    values.len(),
                    self.row_len
                ),
            ));
        }
        for v in values {
            self.file.write_all(&v.to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes the final shape into the header and flushes; returns the number of rows.
    pub fn finish(mut self) -> std::io::Result<usize> {
        self.file.flush()?;
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header("<f4", &shape_with(self.rows, &self.row_shape))?)?;
        file.sync_all()?;
        Ok(self.rows)
    }
}

/// Writes a one-dimensional `i64` array.
pub fn write_i64(path: &Path, values: &[i64]) -> std::io::Result<()> {
    let mut bytes = header("<i8", &format!("({},)", values.len()))?;
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

fn shape_with(rows: usize, row_shape: &[usize]) -> String {
    let mut dims = vec![rows.to_string()];
    dims.extend(row_shape.iter().map(ToString::to_string));
    if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    }
}

/// The magic string, version 1.0, header length and the padded header dictionary.
fn header(descr: &str, shape: &str) -> std::io::Result<Vec<u8>> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let preamble = 10; // magic (6) + version (2) + header length (2)
    if preamble + dict.len() + 1 > HEADER_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("shape {shape} does not fit in a .npy header"),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let text_len = HEADER_BYTES - preamble;
    out.extend_from_slice(&u16::try_from(text_len).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(HEADER_BYTES - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_a_multiple_of_64_and_holds_the_final_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.npy");
        let mut w = NpyWriter::create(&path, &[1, 2, 3]).expect("create");
        w.push(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).expect("push");
        w.push(&[6.0; 6]).expect("push");
        assert!(w.push(&[1.0]).is_err());
        assert_eq!(w.finish().expect("finish"), 2);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), HEADER_BYTES + 2 * 6 * 4);
        assert_eq!(HEADER_BYTES % 64, 0);
        let text = String::from_utf8_lossy(&bytes[10..HEADER_BYTES]);
        assert!(text.contains("'shape': (2, 1, 2, 3)"), "{text}");
        assert_eq!(
            &bytes[HEADER_BYTES + 4..HEADER_BYTES + 8],
            &1.0f32.to_le_bytes()
        );
    }

    #[test]
    fn one_dimensional_shapes_have_a_trailing_comma() {
        assert_eq!(shape_with(3, &[]), "(3,)");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.npy");
        write_i64(&path, &[1, -1]).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), HEADER_BYTES + 16);
        assert_eq!(&bytes[HEADER_BYTES + 8..], &(-1i64).to_le_bytes());
    }
}
