//! Tensors as the Open Inference Protocol carries them: datatypes, the input data read from JSON
//! (flat or nested), from raw little-endian bytes (HTTP's binary extension, gRPC's
//! `raw_input_contents`) or from gRPC's typed contents, and the outputs written back. Pure.

use super::OipError;

/// The protocol's datatypes (Triton adds BF16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
    Bf16,
}

/// Each datatype: its protocol name, bytes per element (BYTES: none), Triton's config name and
/// its `DataType` enum value in model_config.proto.
const TYPES: [(DataType, &str, usize, &str, i32); 14] = [
    (DataType::Bool, "BOOL", 1, "TYPE_BOOL", 1),
    (DataType::Uint8, "UINT8", 1, "TYPE_UINT8", 2),
    (DataType::Uint16, "UINT16", 2, "TYPE_UINT16", 3),
    (DataType::Uint32, "UINT32", 4, "TYPE_UINT32", 4),
    (DataType::Uint64, "UINT64", 8, "TYPE_UINT64", 5),
    (DataType::Int8, "INT8", 1, "TYPE_INT8", 6),
    (DataType::Int16, "INT16", 2, "TYPE_INT16", 7),
    (DataType::Int32, "INT32", 4, "TYPE_INT32", 8),
    (DataType::Int64, "INT64", 8, "TYPE_INT64", 9),
    (DataType::Fp16, "FP16", 2, "TYPE_FP16", 10),
    (DataType::Fp32, "FP32", 4, "TYPE_FP32", 11),
    (DataType::Fp64, "FP64", 8, "TYPE_FP64", 12),
    (DataType::Bytes, "BYTES", 0, "TYPE_STRING", 13),
    (DataType::Bf16, "BF16", 2, "TYPE_BF16", 14),
];

impl DataType {
    fn row(self) -> &'static (DataType, &'static str, usize, &'static str, i32) {
        TYPES.iter().find(|t| t.0 == self).expect("every datatype has its row. This is a bug.")
    }

    pub fn parse(name: &str) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == name).map(|t| t.0)
    }

    /// The protocol's name (`FP32`).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Bytes per element; None for BYTES (each element carries its length).
    pub fn size(self) -> Option<usize> {
        Some(self.row().2).filter(|s| *s > 0)
    }

    /// Triton's model configuration name (`TYPE_FP32`; BYTES is `TYPE_STRING`).
    pub fn config_name(self) -> &'static str {
        self.row().3
    }

    /// model_config.proto's `DataType` value.
    pub fn proto(self) -> i32 {
        self.row().4
    }
}

/// An input tensor of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: InputData,
}

/// An input's elements, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
    /// A datatype no model here takes: checked for its size, not read (the model refuses it by
    /// name).
    Other,
}

/// Elements of a tensor of `shape`; a negative dimension or an overflowing product is refused.
pub fn elements(name: &str, shape: &[i64]) -> Result<usize, OipError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d)
            .map_err(|_| OipError::invalid(format!("input `{name}`: shape {shape:?} has a negative dimension")))?;
        acc.checked_mul(d).ok_or_else(|| OipError::invalid(format!("input `{name}`: shape {shape:?} is too large")))
    })
}

/// Parses a datatype name, naming the tensor when it is not one of the protocol's.
pub fn datatype(tensor: &str, name: &str) -> Result<DataType, OipError> {
    DataType::parse(name).ok_or_else(|| {
        let known: Vec<_> = TYPES.iter().map(|t| t.1).collect();
        OipError::invalid(format!("input `{tensor}`: unknown datatype `{name}` (one of {})", known.join(", ")))
    })
}

/// An input's elements from raw little-endian bytes (BYTES: each element a u32 LE length and
/// its bytes), `count` of them.
pub fn from_raw(name: &str, datatype: DataType, raw: &[u8], count: usize) -> Result<InputData, OipError> {
    match datatype.size() {
        Some(size) => {
            if Some(raw.len()) != count.checked_mul(size) {
                return Err(OipError::invalid(format!(
                    "input `{name}`: {} bytes of {} data, its shape needs {count} × {size}",
                    raw.len(),
                    datatype.name()
                )));
            }
            Ok(match datatype {
                DataType::Fp32 => {
                    InputData::Fp32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                }
                _ => InputData::Other,
            })
        }
        None => {
            let items = split_bytes(raw)
                .ok_or_else(|| OipError::invalid(format!("input `{name}`: BYTES data cut short (each element is a 4-byte little-endian length, then its bytes)")))?;
            if items.len() != count {
                return Err(OipError::invalid(format!(
                    "input `{name}`: {} BYTES elements, its shape needs {count}",
                    items.len()
                )));
            }
            Ok(InputData::Bytes(items))
        }
    }
}

/// BYTES elements, each a u32 LE length then its bytes; None when the data is cut short.
pub fn split_bytes(mut raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut items = Vec::new();
    while !raw.is_empty() {
        let len = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?) as usize;
        items.push(raw.get(4..4 + len)?.to_vec());
        raw = &raw[4 + len..];
    }
    Some(items)
}

/// BYTES elements as raw data: each a u32 LE length then its bytes.
pub fn join_bytes(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// An input's elements from JSON `data`, flat or nested (row-major); BYTES elements are strings.
pub fn from_json(
    name: &str,
    datatype: DataType,
    data: &serde_json::Value,
    count: usize,
) -> Result<InputData, OipError> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if flat.len() != count {
        return Err(OipError::invalid(format!(
            "input `{name}`: {} elements in `data`, its shape needs {count}",
            flat.len()
        )));
    }
    let wrong =
        |what: &str| OipError::invalid(format!("input `{name}`: `data` of a {} tensor holds {what}", datatype.name()));
    match datatype {
        DataType::Fp32 => flat
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| wrong("a value that is not a number")))
            .collect::<Result<_, _>>()
            .map(InputData::Fp32),
        DataType::Bytes => flat
            .iter()
            .map(|v| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| wrong("a value that is not a string")))
            .collect::<Result<_, _>>()
            .map(InputData::Bytes),
        DataType::Bool => {
            if flat.iter().all(|v| v.is_boolean()) {
                Ok(InputData::Other)
            } else {
                Err(wrong("a value that is not a boolean"))
            }
        }
        _ => {
            if flat.iter().all(|v| v.is_number()) {
                Ok(InputData::Other)
            } else {
                Err(wrong("a value that is not a number"))
            }
        }
    }
}

fn flatten<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// An output tensor of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: OutputData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

impl OutputData {
    pub fn datatype(&self) -> DataType {
        match self {
            Self::Fp32(_) => DataType::Fp32,
            Self::Bytes(_) => DataType::Bytes,
        }
    }

    /// Row-major little-endian bytes (BYTES: length-prefixed elements).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Self::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Bytes(items) => join_bytes(items),
        }
    }

    /// JSON `data`, flat (BYTES as strings, lossily where not UTF-8).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Self::Fp32(v) => serde_json::Value::Array(
                v.iter()
                    .map(|x| serde_json::Number::from_f64(*x as f64).map_or(serde_json::Value::Null, Into::into))
                    .collect(),
            ),
            Self::Bytes(items) => {
                serde_json::Value::Array(items.iter().map(|b| String::from_utf8_lossy(b).into_owned().into()).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn datatypes_round_trip_their_names_and_config_names() {
        for (t, name, ..) in TYPES {
            assert_eq!(DataType::parse(name), Some(t));
        }
        assert_eq!(DataType::Bytes.config_name(), "TYPE_STRING");
        assert_eq!(DataType::Fp32.proto(), 11);
        assert_eq!(DataType::Bytes.size(), None);
        assert!(datatype("x", "FLOAT").unwrap_err().message.contains("input `x`: unknown datatype `FLOAT`"));
    }

    #[test]
    fn json_data_flat_or_nested_is_read_row_major_and_counted() {
        let nested = json!([[1.0, 2.5], [3, -4]]);
        assert_eq!(from_json("x", DataType::Fp32, &nested, 4).unwrap(), InputData::Fp32(vec![1.0, 2.5, 3.0, -4.0]));
        let e = from_json("x", DataType::Fp32, &nested, 3).unwrap_err();
        assert!(e.message.contains("input `x`: 4 elements") && e.message.contains("needs 3"), "{}", e.message);
        let e = from_json("x", DataType::Fp32, &json!([1, "a"]), 2).unwrap_err();
        assert!(e.message.contains("not a number"), "{}", e.message);
        assert_eq!(
            from_json("s", DataType::Bytes, &json!(["ab", "c"]), 2).unwrap(),
            InputData::Bytes(vec![b"ab".to_vec(), b"c".to_vec()])
        );
        assert_eq!(from_json("i", DataType::Int64, &json!([1, 2]), 2).unwrap(), InputData::Other);
    }

    #[test]
    fn raw_data_is_little_endian_and_bytes_elements_are_length_prefixed() {
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(from_raw("x", DataType::Fp32, &raw, 2).unwrap(), InputData::Fp32(vec![1.5, -2.0]));
        assert!(from_raw("x", DataType::Fp32, &raw[..7], 2).unwrap_err().message.contains("7 bytes"));
        let items = vec![b"jpeg".to_vec(), vec![], vec![0xff; 3]];
        let joined = join_bytes(&items);
        assert_eq!(joined.len(), 4 * 3 + 7);
        assert_eq!(from_raw("b", DataType::Bytes, &joined, 3).unwrap(), InputData::Bytes(items));
        assert!(from_raw("b", DataType::Bytes, &joined[..joined.len() - 1], 3).is_err());
        assert!(from_raw("b", DataType::Bytes, &joined, 2).unwrap_err().message.contains("3 BYTES elements"));
        assert_eq!(OutputData::Fp32(vec![1.5, -2.0]).raw(), raw);
    }

    #[test]
    fn shapes_are_counted_and_negative_or_huge_ones_refused() {
        assert_eq!(elements("x", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(elements("x", &[]).unwrap(), 1);
        assert!(elements("x", &[2, -1]).unwrap_err().message.contains("negative"));
        assert!(elements("x", &[i64::MAX, i64::MAX]).is_err());
    }
}
