//! The one safetensors header reader of the crate ([`parse_header`]): tensors placed from the
//! header, every offset checked against the file's length before any data is read; and a weight
//! file read whole ([`WeightFile`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::files::{io_error, open_regular, FileKey};
use super::{LoadError, MAX_HEADER_BYTES};

/// One tensor as the file header describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorHeader {
    /// Name without the `model.` prefix.
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Equal to the shape's element count times the dtype's size.
    pub data_bytes: u64,
    /// Offset of the tensor's first byte from the start of the data section.
    pub data_offset: u64,
}

impl TensorHeader {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// The tensor's bytes within `data`, the data section of its file.
    pub fn bytes<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.data_offset).ok()?;
        let end = start.checked_add(usize::try_from(self.data_bytes).ok()?)?;
        data.get(start..end)
    }
}

/// A safetensors file's header, checked against the file's length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SafetensorsHeader {
    /// In data order: the first starts at 0 and each one where the previous one ends.
    pub tensors: Vec<TensorHeader>,
    /// File offset of the data section (8 + the header's length).
    pub data_start: u64,
    /// Bytes of the data section: the file is exactly `data_start + data_len` bytes long.
    pub data_len: u64,
}

/// The header's JSON, in the shape the `safetensors` crate reads it (so both accept the same).
#[derive(Deserialize)]
struct RawHeader {
    #[serde(rename = "__metadata__")]
    #[allow(dead_code)]
    metadata: Option<HashMap<String, String>>,
    #[serde(flatten)]
    tensors: HashMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Strips the `model.` prefix that `OPTForCausalLM` checkpoints carry and `OPTModel` ones lack.
pub fn canonical_name(name: &str) -> &str {
    name.strip_prefix("model.").unwrap_or(name)
}

/// The checked header of the safetensors file at `path` (a regular file), without its data.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader, LoadError> {
    Ok(InspectedFile::read(path)?.header.as_ref().clone())
}

/// A weight file as an inspection found it: its identity and its checked header. An attach
/// handed it reads only the data, from the same file version ([`WeightFile::read_inspected`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectedFile {
    pub key: FileKey,
    pub header: Arc<SafetensorsHeader>,
}

impl InspectedFile {
    /// Opens the safetensors file at `path` (a regular file) and parses its header, checked
    /// against the file's length: the one place a header is parsed from a file.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let (mut file, meta) = open_regular(path)?;
        Self::parse(path, &mut file, &meta)
    }

    /// Parses the header of `file`, opened from `path` with metadata `meta`.
    pub fn parse(
        path: &Path,
        file: &mut std::fs::File,
        meta: &std::fs::Metadata,
    ) -> Result<Self, LoadError> {
        let header =
            parse_header(file, meta.len()).map_err(|reason| LoadError::CorruptSafetensors {
                path: path.to_path_buf(),
                reason,
            })?;
        tracing::debug!(
            target: "wc::headers",
            file = %path.display(),
            tensors = header.tensors.len(),
            "safetensors header parsed"
        );
        Ok(Self {
            key: FileKey::from_metadata(path, meta),
            header: Arc::new(header),
        })
    }

    /// Opens the file again for its data, with what describes the version opened: this
    /// inspection when the file is still that version (same identity, taken from the open
    /// file), else the header of the file as it is now, parsed from the descriptor opened (a
    /// file replaced since is read as it is now, confined like every open).
    pub fn reopen(&self) -> Result<(std::fs::File, InspectedFile), LoadError> {
        let path = &self.key.path;
        let (mut file, meta) = open_regular(path)?;
        if FileKey::from_metadata(path, &meta) == self.key {
            return Ok((file, self.clone()));
        }
        let current = Self::parse(path, &mut file, &meta)?;
        Ok((file, current))
    }
}

/// Reads a safetensors header from the start of a file `file_len` bytes long, reading exactly
/// the length prefix and the header (`reader` is left at the data section), and checks it:
///
/// - the header is at most [`MAX_HEADER_BYTES`] and fits the file; it is UTF-8 JSON;
/// - sorted by offsets, the tensors tile the data section: the first starts at 0, each starts
///   where the previous one ends (no gap, no overlap);
/// - each tensor's byte length is its element count times its dtype's size, computed without
///   overflow, in whole bytes;
/// - the data section ends exactly at the end of the file.
///
/// This accepts exactly what `safetensors::SafeTensors::deserialize` accepts for the whole
/// file (a property test holds it to that), while reading only the header.
pub fn parse_header(reader: &mut impl Read, file_len: u64) -> Result<SafetensorsHeader, String> {
    let mut prefix = [0u8; 8];
    reader
        .read_exact(&mut prefix)
        .map_err(|_| format!("only {file_len} bytes, too short for a header"))?;
    let header_len = u64::from_le_bytes(prefix);
    // The prefix is never quoted: a file that is not safetensors would have its first bytes
    // read back to whoever asked to load it.
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "the header length in the first 8 bytes is over the limit of {MAX_HEADER_BYTES} \
             bytes (not a safetensors file?)"
        ));
    }
    let data_start = 8 + header_len;
    if data_start > file_len {
        return Err(format!(
            "the header length in the first 8 bytes is past the end of the {file_len}-byte \
             file (not a safetensors file?)"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let text = std::str::from_utf8(&header).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| format!("bad header: {e}"))?;
    let mut entries: Vec<(String, RawEntry)> = raw.tensors.into_iter().collect();
    entries.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    let mut tensors = Vec::with_capacity(entries.len());
    let mut end = 0u64;
    for (name, entry) in entries {
        let (start, stop) = (entry.data_offsets.0 as u64, entry.data_offsets.1 as u64);
        if start != end || stop < start {
            return Err(format!(
                "tensor `{name}` has data_offsets [{start}, {stop}]: tensors must follow each \
                 other from offset 0 without gaps or overlaps (the previous one ends at {end})"
            ));
        }
        let bits = entry
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(entry.dtype.bitsize()))
            .ok_or_else(|| {
                format!(
                    "tensor `{name}`: shape {:?} of {:?} overflows",
                    entry.shape, entry.dtype
                )
            })?;
        if bits % 8 != 0 {
            return Err(format!(
                "tensor `{name}`: {bits} bits of {:?} are not a whole number of bytes",
                entry.dtype
            ));
        }
        let bytes = (bits / 8) as u64;
        if stop - start != bytes {
            return Err(format!(
                "tensor `{name}`: shape {:?} of {:?} needs {bytes} bytes but data_offsets \
                 [{start}, {stop}] hold {}",
                entry.shape,
                entry.dtype,
                stop - start
            ));
        }
        end = stop;
        tensors.push(TensorHeader {
            name: canonical_name(&name).to_string(),
            dtype: entry.dtype,
            shape: entry.shape,
            data_bytes: bytes,
            data_offset: start,
        });
    }
    let declared = data_start
        .checked_add(end)
        .ok_or_else(|| "declared size overflows".to_string())?;
    if declared > file_len {
        return Err(format!(
            "file is truncated: its header declares {declared} bytes, the file has {file_len}"
        ));
    }
    if declared < file_len {
        return Err(format!(
            "{} bytes after the {declared} its header declares",
            file_len - declared
        ));
    }
    Ok(SafetensorsHeader {
        tensors,
        data_start,
        data_len: end,
    })
}

/// A weight file read whole: its identity, its checked header and its data section.
#[derive(Debug)]
pub struct WeightFile {
    pub key: FileKey,
    pub header: Arc<SafetensorsHeader>,
    /// The data section, exactly `header.data_len` bytes.
    pub data: Vec<u8>,
}

impl WeightFile {
    /// Opens `path`, checks its header against its length, then reads exactly the data section
    /// (so a file with bytes beyond what its header declares is refused before any is read).
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let (mut file, meta) = open_regular(path)?;
        let inspected = InspectedFile::parse(path, &mut file, &meta)?;
        Self::read_data(inspected, file)
    }

    /// Reads the data section of the file `inspected` describes, without parsing its header
    /// again (unless the file changed since: see [`InspectedFile::reopen`]).
    pub fn read_inspected(inspected: &InspectedFile) -> Result<Self, LoadError> {
        let (mut file, current) = inspected.reopen()?;
        file.seek(std::io::SeekFrom::Start(current.header.data_start))
            .map_err(|e| io_error(&current.key.path, e))?;
        Self::read_data(current, file)
    }

    /// Reads the data section from `file`, positioned at its start.
    fn read_data(inspected: InspectedFile, file: std::fs::File) -> Result<Self, LoadError> {
        let InspectedFile { key, header } = inspected;
        let path = &key.path;
        let corrupt = |reason: String| LoadError::CorruptSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let len = usize::try_from(header.data_len)
            .map_err(|_| corrupt(format!("{} bytes of data", header.data_len)))?;
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|e| corrupt(format!("cannot hold {len} bytes of data: {e}")))?;
        file.take(header.data_len)
            .read_to_end(&mut data)
            .map_err(|e| io_error(path, e))?;
        if data.len() != len {
            return Err(corrupt(format!(
                "file is truncated: it changed while read, {} of {len} data bytes",
                data.len()
            )));
        }
        Ok(Self { key, header, data })
    }
}
