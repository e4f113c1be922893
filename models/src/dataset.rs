//! Labelled image sets: the frames a model is calibrated, evaluated and trained on.
//!
//! This module owns reading the two layouts a factory has its images in: an image folder with
//! one sub-folder per label (what `defect-agent capture-export` writes, after a person moved
//! misfiled frames between folders), and a CSV of `file,label` rows. It lists the frames with
//! their labels, checks the labels against a model's, and fingerprints the data for a bundle's
//! provenance. It does not decode images.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Image file endings read from folders (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// One image of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Where the image is.
    pub path: PathBuf,
    /// The image's name in reports: its path relative to the set's root.
    pub name: String,
    /// The label a person gave it; `None` for an unlabelled frame.
    pub label: Option<String>,
}

/// A list of images with their labels, read from a folder or a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// The folder or CSV file the set was read from.
    pub source: PathBuf,
    /// The images, sorted by name.
    pub samples: Vec<Sample>,
}

/// Why an image set could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A folder or file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CSV row is malformed or names a missing file.
    #[error("{}, line {line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// The set holds no image.
    #[error(
        "{}: no images (expected JPEG, PNG or BMP files in one folder per label, or a file,label CSV)",
        path.display()
    )]
    Empty {
        /// The folder or CSV file.
        path: PathBuf,
    },
    /// Labels in the data that the model does not have.
    #[error(
        "{}: label(s) {} are not labels of the model (it has {}); rename or remove those folders or rows",
        path.display(),
        quoted(unknown),
        quoted(known)
    )]
    UnknownLabels {
        /// The folder or CSV file.
        path: PathBuf,
        /// The labels not known to the model.
        unknown: Vec<String>,
        /// The model's labels.
        known: Vec<String>,
    },
    /// Frames without a label where labels are needed.
    #[error(
        "{}: {count} image(s) have no label (for example {example}); put each image in a folder named after its label",
        path.display()
    )]
    Unlabelled {
        /// The folder or CSV file.
        path: PathBuf,
        /// How many images have no label.
        count: usize,
        /// One of them.
        example: String,
    },
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ImageSet {
    /// Reads a folder (one sub-folder per label; images directly in it are unlabelled) or a
    /// CSV file of `file,label` rows.
    pub fn open(path: &Path) -> Result<Self, DatasetError> {
        let meta = std::fs::metadata(path).map_err(|source| DatasetError::Io {
            path: path.to_owned(),
            source,
        })?;
        let set = if meta.is_dir() {
            Self::from_folder(path)?
        } else {
            Self::from_csv(path)?
        };
        if set.samples.is_empty() {
            return Err(DatasetError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(set)
    }

    /// Reads a folder: every image in a sub-folder is labelled with the sub-folder's name;
    /// images directly in the folder are unlabelled; other files (such as `captured.csv`) and
    /// hidden entries are ignored.
    pub fn from_folder(dir: &Path) -> Result<Self, DatasetError> {
        let mut samples = Vec::new();
        for entry in list_dir(dir)? {
            let name = file_name(&entry);
            if entry.is_dir() {
                for file in list_dir(&entry)? {
                    if is_image(&file) {
                        samples.push(Sample {
                            name: format!("{name}/{}", file_name(&file)),
                            path: file,
                            label: Some(name.clone()),
                        });
                    }
                }
            } else if is_image(&entry) {
                samples.push(Sample {
                    name,
                    path: entry,
                    label: None,
                });
            }
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ImageSet {
            source: dir.to_owned(),
            samples,
        })
    }

    /// Reads a CSV file. With a header naming `file` and `label` columns (as
    /// `capture-export`'s `captured.csv` and `models/samples/labels.csv` have), those columns
    /// are used; otherwise the first two columns are file and label. Files are relative to the
    /// CSV's folder; an empty label leaves the frame unlabelled.
    pub fn from_csv(path: &Path) -> Result<Self, DatasetError> {
        let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let mut columns = (0, Some(1));
        let mut first = lines.next();
        if let Some((_, header)) = first {
            let cells: Vec<String> = split_csv(header)
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect();
            if let Some(file) = cells.iter().position(|c| c == "file") {
                columns = (file, cells.iter().position(|c| c == "label"));
                first = None;
            }
        }
        let mut samples = Vec::new();
        for (index, line) in first.into_iter().chain(lines) {
            let cells = split_csv(line);
            let csv_error = |message: String| DatasetError::Csv {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let file = cells
                .get(columns.0)
                .filter(|f| !f.is_empty())
                .ok_or_else(|| csv_error("has no file name".into()))?;
            let label = columns
                .1
                .and_then(|c| cells.get(c))
                .filter(|l| !l.is_empty())
                .cloned();
            let full = base.join(file);
            if !full.is_file() {
                return Err(csv_error(format!("{} is not a file", full.display())));
            }
            samples.push(Sample {
                path: full,
                name: file.clone(),
                label,
            });
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ImageSet {
            source: path.to_owned(),
            samples,
        })
    }

    /// The distinct labels in the set.
    pub fn labels(&self) -> BTreeSet<&str> {
        self.samples
            .iter()
            .filter_map(|s| s.label.as_deref())
            .collect()
    }

    /// Whether any image has a label.
    pub fn is_labelled(&self) -> bool {
        self.samples.iter().any(|s| s.label.is_some())
    }

    /// Checks that every image has a label and that every label is one of `known`.
    pub fn check_labels(&self, known: &[String]) -> Result<(), DatasetError> {
        let unlabelled: Vec<&Sample> = self.samples.iter().filter(|s| s.label.is_none()).collect();
        if let Some(example) = unlabelled.first() {
            return Err(DatasetError::Unlabelled {
                path: self.source.clone(),
                count: unlabelled.len(),
                example: example.name.clone(),
            });
        }
        let unknown: Vec<String> = self
            .labels()
            .into_iter()
            .filter(|l| !known.iter().any(|k| k == l))
            .map(str::to_owned)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(DatasetError::UnknownLabels {
                path: self.source.clone(),
                unknown,
                known: known.to_vec(),
            })
        }
    }

    /// At most `per_label` images of each label, the first by name; unlabelled images are all
    /// kept.
    pub fn take_per_label(&self, per_label: usize) -> ImageSet {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        let samples = self
            .samples
            .iter()
            .filter(|s| {
                let Some(label) = s.label.as_deref() else {
                    return true;
                };
                let count = counts.entry(label).or_default();
                *count += 1;
                *count <= per_label
            })
            .cloned()
            .collect();
        ImageSet {
            source: self.source.clone(),
            samples,
        }
    }
}

/// A fingerprint of a data set: the SHA-256 over each image's name, label and content digest,
/// in name order. Two sets with the same images under the same names and labels have the same
/// fingerprint wherever they lie on disk.
#[derive(Debug, Default)]
pub struct Fingerprint {
    lines: Vec<String>,
}

impl Fingerprint {
    /// Adds one image.
    pub fn add(&mut self, sample: &Sample, content: &[u8]) {
        self.add_digest(sample, &crate::bundle::sha256_hex(content));
    }

    /// Adds one image by the SHA-256 of its content (lowercase hex).
    pub fn add_digest(&mut self, sample: &Sample, digest: &str) {
        self.lines.push(format!(
            "{}\t{}\t{digest}\n",
            sample.name,
            sample.label.as_deref().unwrap_or(""),
        ));
    }

    /// The fingerprint, lowercase hex.
    pub fn finish(mut self) -> String {
        self.lines.sort();
        let mut hasher = Sha256::new();
        for line in &self.lines {
            hasher.update(line.as_bytes());
        }
        let mut out = String::with_capacity(64);
        for byte in hasher.finalize() {
            let _ = write!(out, "{byte:02x}");
        }
        out
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !file_name(&path).starts_with('.') {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Splits one CSV line at commas, removing surrounding quotes and white space of each cell.
fn split_csv(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn folders_are_labels_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(&dir.path().join("good/a.jpg"));
        touch(&dir.path().join("scratch/b.PNG"));
        touch(&dir.path().join("scratch/notes.txt"));
        touch(&dir.path().join("captured.csv"));
        touch(&dir.path().join("loose.bmp"));
        let set = ImageSet::open(dir.path()).expect("open");
        let names: Vec<(&str, Option<&str>)> = set
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.label.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("good/a.jpg", Some("good")),
                ("loose.bmp", None),
                ("scratch/b.PNG", Some("scratch")),
            ]
        );
        let err = set
            .check_labels(&["good".into(), "scratch".into()])
            .expect_err("unlabelled accepted");
        assert!(err.to_string().contains("loose.bmp"), "{err}");
    }

    #[test]
    fn csv_with_or_without_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(&dir.path().join("img/1.jpg"));
        touch(&dir.path().join("img/2.jpg"));
        let with = dir.path().join("with.csv");
        std::fs::write(
            &with,
            "id,file,label\n7,img/1.jpg,good\n8,\"img/2.jpg\",dent\n",
        )
        .expect("write");
        let set = ImageSet::open(&with).expect("open");
        assert_eq!(set.samples[1].label.as_deref(), Some("dent"));
        let without = dir.path().join("without.csv");
        std::fs::write(&without, "img/1.jpg,good\nimg/3.jpg,dent\n").expect("write");
        let err = ImageSet::open(&without).expect_err("missing file accepted");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("img/3.jpg"), "{err}");
    }

    #[test]
    fn unknown_labels_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(&dir.path().join("good/a.jpg"));
        touch(&dir.path().join("unlabelled/b.jpg"));
        let set = ImageSet::open(dir.path()).expect("open");
        let err = set
            .check_labels(&["good".into(), "dent".into()])
            .expect_err("accepted");
        assert!(err.to_string().contains("\"unlabelled\""), "{err}");
    }

    #[test]
    fn fingerprint_ignores_location_but_not_labels() {
        let sample = |label: &str| Sample {
            path: PathBuf::from("/x/a.jpg"),
            name: "a.jpg".into(),
            label: Some(label.into()),
        };
        let mut a = Fingerprint::default();
        a.add(&sample("good"), b"1");
        let mut b = Fingerprint::default();
        b.add(&sample("good"), b"1");
        let mut c = Fingerprint::default();
        c.add(&sample("dent"), b"1");
        let (a, b, c) = (a.finish(), b.finish(), c.finish());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
