//! Reads the float initializers (weights) of an ONNX model: just enough protobuf to walk
//! `ModelProto.graph.initializer[]` and decode each `TensorProto` (name, dims, float data from
//! `raw_data` or `float_data`). The graph itself is not read: the network is written in burn.

use std::collections::HashMap;

/// One initializer: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

const FLOAT: u64 = 1;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 64 bits".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Next field: (number, wire type, payload for length-delimited fields, value for the others).
    fn field(&mut self) -> Result<(u64, u64, &'a [u8], u64), String> {
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => Ok((number, wire, &[], self.varint()?)),
            1 => Ok((number, wire, self.bytes(8)?, 0)),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "field too long")?;
                Ok((number, wire, self.bytes(n)?, 0))
            }
            5 => Ok((number, wire, self.bytes(4)?, 0)),
            other => Err(format!("unsupported protobuf wire type {other}")),
        }
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn tensor(buf: &[u8]) -> Result<(String, OnnxTensor), String> {
    let mut r = Reader::new(buf);
    let (mut name, mut dims, mut data_type, mut data) = (String::new(), Vec::new(), 0, Vec::new());
    while !r.done() {
        match r.field()? {
            (1, 0, _, v) => dims.push(v as usize),
            (1, 2, packed, _) => {
                let mut p = Reader::new(packed);
                while !p.done() {
                    dims.push(p.varint()? as usize);
                }
            }
            (2, 0, _, v) => data_type = v,
            (4, 2, packed, _) | (9, 2, packed, _) => data.extend(floats(packed)),
            (4, 5, one, _) => data.extend(floats(one)),
            (8, 2, s, _) => name = String::from_utf8_lossy(s).into_owned(),
            (13, 2, _, _) => return Err(format!("initializer `{name}` uses external data, which is not supported")),
            _ => {}
        }
    }
    if data_type != FLOAT {
        return Err(format!("initializer `{name}` has data type {data_type}, only float (1) is supported"));
    }
    let expected: usize = dims.iter().product();
    if data.len() != expected {
        return Err(format!("initializer `{name}`: {} values for shape {dims:?}", data.len()));
    }
    Ok((name, OnnxTensor { dims, data }))
}

/// Every float initializer of the serialized ONNX `model`, by name.
pub fn initializers(model: &[u8]) -> Result<HashMap<String, OnnxTensor>, String> {
    let mut out = HashMap::new();
    let mut r = Reader::new(model);
    while !r.done() {
        if let (7, 2, graph, _) = r.field()? {
            let mut g = Reader::new(graph);
            while !g.done() {
                if let (5, 2, t, _) = g.field()? {
                    let (name, tensor) = tensor(t)?;
                    out.insert(name, tensor);
                }
            }
        }
    }
    if out.is_empty() {
        return Err("no initializers: not an ONNX model with embedded weights".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn ld(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn tensor_proto(name: &str, dims: &[u64], values: &[f32], raw: bool) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint(1 << 3, &mut t);
            varint(d, &mut t);
        }
        varint(2 << 3, &mut t);
        varint(1, &mut t);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        ld(if raw { 9 } else { 4 }, &bytes, &mut t);
        ld(8, name.as_bytes(), &mut t);
        t
    }

    #[test]
    fn reads_raw_and_float_data_initializers_and_skips_other_fields() {
        let mut graph = Vec::new();
        ld(1, b"a node we do not read", &mut graph);
        ld(5, &tensor_proto("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], true), &mut graph);
        ld(5, &tensor_proto("s", &[1], &[127.5], false), &mut graph);
        let mut model = Vec::new();
        varint(1 << 3, &mut model); // ir_version
        varint(6, &mut model);
        ld(7, &graph, &mut model);
        let w = initializers(&model).unwrap();
        assert_eq!(w["w"], OnnxTensor { dims: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] });
        assert_eq!(w["s"].data, vec![127.5]);
    }

    #[test]
    fn refuses_truncated_or_mis_shaped_data() {
        let mut graph = Vec::new();
        ld(5, &tensor_proto("w", &[4], &[1.0, 2.0], true), &mut graph);
        let mut model = Vec::new();
        ld(7, &graph, &mut model);
        assert!(initializers(&model).unwrap_err().contains("2 values for shape [4]"));
        assert!(initializers(&model[..model.len() - 3]).is_err());
        assert!(initializers(b"").is_err());
    }
}
