//! Property test: our safetensors header reader accepts exactly the files the `safetensors` crate accepts, places tensors where it does, and never panics.
//!
//! Files are generated valid and then mutated: random dtypes (unknown ones and sub-byte ones
//! included), shapes with zero, huge and overflowing dimensions, offsets shifted into gaps and
//! overlaps or out of range, duplicate names, odd `__metadata__`, wrong length prefixes (up to
//! 2^63), truncated and over-long data sections, and plain garbage.
//!
//! Our reader ([`parse_header`]) is deliberately no stricter than the crate: its header limit is
//! the crate's (100 MB), and it accepts every dtype the crate knows; what the OPT engine cannot
//! use (a non-float tensor) is refused later, by the checkpoint check, with its own error.

use std::io::Cursor;

use proptest::prelude::*;
use safetensors::SafeTensors;
use worker_controller::load::{canonical_name, parse_header};

const DTYPES: &[(&str, u32)] = &[
    ("F32", 32),
    ("F16", 16),
    ("BF16", 16),
    ("I64", 64),
    ("U8", 8),
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F64", 64),
    ("X9", 8),
    ("f32", 32),
];
const NAMES: &[&str] = &[
    "a",
    "b",
    "model.a",
    "model.decoder.w",
    "c.weight",
    "__metadata__",
];

#[derive(Clone, Debug)]
struct Tensor {
    name: usize,
    dtype: usize,
    shape: Vec<u128>,
    /// Added to the start offset a valid file would have.
    start_shift: i128,
    /// Added to the end offset a valid file would have.
    end_shift: i128,
    extra_field: bool,
}

#[derive(Clone, Debug)]
struct File {
    tensors: Vec<Tensor>,
    metadata: usize,
    padding: usize,
    /// Added to the true header length in the 8-byte prefix (or replacing it).
    prefix: Prefix,
    /// Bytes added to (or removed from) the data section.
    data_shift: i64,
    /// Cut the header text after this many bytes.
    cut_header: Option<usize>,
    /// Replace the whole file by these bytes.
    garbage: Option<Vec<u8>>,
    /// Ignore every mutation above except dimensions and dtypes (a file meant to be valid).
    pristine: bool,
}

#[derive(Clone, Debug)]
enum Prefix {
    Exact,
    Shift(i64),
    Value(u64),
}

fn dim() -> impl Strategy<Value = u128> {
    prop_oneof![
        8 => 0u128..5,
        1 => Just(1u128 << 32),
        1 => Just(u64::MAX as u128),
        1 => Just(1u128 << 64),
    ]
}

fn shift() -> impl Strategy<Value = i128> {
    prop_oneof![
        12 => Just(0i128),
        3 => -3i128..4,
        1 => Just(1i128 << 63),
        1 => Just(-(1i128 << 40)),
    ]
}

fn tensor() -> impl Strategy<Value = Tensor> {
    (
        0..NAMES.len(),
        0..DTYPES.len(),
        prop::collection::vec(dim(), 0..4),
        shift(),
        shift(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(name, dtype, shape, start_shift, end_shift, extra_field)| Tensor {
                name,
                dtype,
                shape,
                start_shift,
                end_shift,
                extra_field,
            },
        )
}

fn file() -> impl Strategy<Value = File> {
    (
        prop::collection::vec(tensor(), 0..6),
        0usize..6,
        0usize..9,
        prop_oneof![
            10 => Just(Prefix::Exact),
            2 => (-3i64..4).prop_map(Prefix::Shift),
            1 => Just(Prefix::Value(1 << 63)),
            1 => Just(Prefix::Value(100_000_001)),
            1 => Just(Prefix::Value(u64::MAX)),
        ],
        prop_oneof![8 => Just(0i64), 2 => -3i64..4, 1 => Just(1000i64)],
        prop::option::weighted(0.05, 0usize..200),
        prop::option::weighted(0.05, prop::collection::vec(any::<u8>(), 0..64)),
        prop::bool::weighted(0.4),
    )
        .prop_map(
            |(tensors, metadata, padding, prefix, data_shift, cut_header, garbage, pristine)| {
                File {
                    tensors,
                    metadata,
                    padding,
                    prefix,
                    data_shift,
                    cut_header,
                    garbage,
                    pristine,
                }
            },
        )
}

/// The bytes of `file`: a header whose offsets are those of a valid file, shifted as told.
fn render(file: &File) -> Vec<u8> {
    if file.pristine {
        let mut file = file.clone();
        for t in &mut file.tensors {
            (t.start_shift, t.end_shift) = (0, 0);
        }
        (file.prefix, file.data_shift, file.cut_header, file.garbage) =
            (Prefix::Exact, 0, None, None);
        file.pristine = false;
        return render(&file);
    }
    if let Some(garbage) = &file.garbage {
        return garbage.clone();
    }
    let mut entries = Vec::new();
    let mut end: i128 = 0;
    for t in &file.tensors {
        let (dtype, bits) = DTYPES[t.dtype];
        let elements = t
            .shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d))
            .unwrap_or(u128::MAX);
        let bytes = elements.saturating_mul(bits as u128) / 8;
        let start = end + t.start_shift;
        let stop = start.saturating_add(bytes.min(i128::MAX as u128) as i128) + t.end_shift;
        end = stop;
        let shape: Vec<String> = t.shape.iter().map(u128::to_string).collect();
        let extra = if t.extra_field { r#","extra":1"# } else { "" };
        entries.push(format!(
            r#""{}":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{start},{stop}]{extra}}}"#,
            NAMES[t.name],
            shape.join(",")
        ));
    }
    let metadata = [
        "",
        r#""__metadata__":{"format":"pt"}"#,
        r#""__metadata__":{"n":1}"#,
        r#""__metadata__":null"#,
        r#""__metadata__":"pt""#,
        r#""__metadata__":{}"#,
    ][file.metadata];
    if !metadata.is_empty() {
        entries.insert(0, metadata.to_string());
    }
    let mut header = format!("{{{}}}{}", entries.join(","), " ".repeat(file.padding));
    if let Some(cut) = file.cut_header {
        header.truncate(cut.min(header.len()));
    }
    let prefix = match file.prefix {
        Prefix::Exact => header.len() as u64,
        Prefix::Shift(d) => (header.len() as i64 + d).max(0) as u64,
        Prefix::Value(v) => v,
    };
    let mut bytes = prefix.to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    let data = (end.clamp(0, 4096) as i64 + file.data_shift).max(0) as usize;
    bytes.extend((0..data).map(|i| i as u8));
    bytes
}

type Placed = Vec<(String, String, Vec<usize>, u64, u64)>;

fn ours(bytes: &[u8]) -> Result<Placed, String> {
    let header = parse_header(&mut Cursor::new(bytes), bytes.len() as u64)?;
    assert_eq!(
        header.data_start + header.data_len,
        bytes.len() as u64,
        "an accepted header covers the file exactly"
    );
    let mut placed: Placed = header
        .tensors
        .into_iter()
        .map(|t| {
            (
                t.name,
                format!("{:?}", t.dtype),
                t.shape,
                t.data_offset,
                t.data_bytes,
            )
        })
        .collect();
    placed.sort();
    Ok(placed)
}

fn theirs(bytes: &[u8]) -> Result<Placed, String> {
    let parsed = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = bytes[8 + n..].as_ptr() as usize;
    let mut placed: Placed = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                canonical_name(&name).to_string(),
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                (view.data().as_ptr() as usize - data_start) as u64,
                view.data().len() as u64,
            )
        })
        .collect();
    placed.sort();
    Ok(placed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn accepts_exactly_what_the_safetensors_crate_accepts(file in file()) {
        let bytes = render(&file);
        let (ours, theirs) = (ours(&bytes), theirs(&bytes));
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "same tensors in the same places"),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "ours {:?} but the crate {:?} for {:?}",
                ours,
                theirs,
                String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
            ),
        }
    }
}

/// The generator reaches both outcomes often enough to mean something.
#[test]
fn the_generated_files_are_both_accepted_and_refused() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..512 {
        let bytes = render(&file().new_tree(&mut runner).unwrap().current());
        match ours(&bytes) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        accepted > 50 && refused > 50,
        "{accepted} accepted, {refused} refused"
    );
}
