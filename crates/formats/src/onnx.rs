//! Reads what a burn network needs from an ONNX model: just enough protobuf to walk
//! `ModelProto.graph` — the float initializers (weights; `raw_data` or `float_data`), int64 ones
//! (shapes, axes), the values of `Constant` nodes (some exporters keep every weight there), each
//! node's op type, inputs, outputs and attributes (to take weights in graph order where their names
//! say nothing) — and `metadata_props` (PP-OCR keeps its recogniser's dictionary there). Nothing is
//! executed: the networks are written in burn.

use std::collections::HashMap;

/// One initializer: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

const FLOAT: u64 = 1;
const INT32: u64 = 6;
const INT64: u64 = 7;

/// A node of the graph, in graph (topological) order.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxNode {
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(String, OnnxAttr)>,
}

/// A node attribute (tensor-valued ones are read into the model's tensors, see `OnnxModel`).
#[derive(Debug, Clone, PartialEq)]
pub enum OnnxAttr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Bytes(Vec<u8>),
    Tensor,
    Other,
}

impl OnnxNode {
    pub fn attr(&self, name: &str) -> Option<&OnnxAttr> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            OnnxAttr::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            OnnxAttr::Ints(v) => Some(v),
            _ => None,
        }
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            OnnxAttr::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// The parts of an ONNX model a burn network reads.
#[derive(Debug, Clone, Default)]
pub struct OnnxModel {
    /// Float tensors by name: the initializers, and the values of `Constant` nodes (named by the
    /// node's output).
    pub floats: HashMap<String, OnnxTensor>,
    /// Int64 tensors by name (initializers and `Constant` values): shapes, axes, indices.
    pub ints: HashMap<String, Vec<i64>>,
    pub nodes: Vec<OnnxNode>,
    /// `metadata_props`, key → value.
    pub metadata: HashMap<String, String>,
    /// `Identity` nodes: output → input.
    identities: HashMap<String, String>,
}

impl OnnxModel {
    /// The tensor a name stands for once `Identity` nodes are followed back (exporters rename
    /// weights through them).
    pub fn resolve<'a>(&'a self, mut name: &'a str) -> &'a str {
        // Bounded: a malformed graph may have an Identity cycle.
        for _ in 0..=self.identities.len() {
            match self.identities.get(name) {
                Some(input) => name = input,
                None => break,
            }
        }
        name
    }

    /// The float tensor an input name stands for (through `Identity` nodes), if it is one.
    pub fn float(&self, name: &str) -> Option<&OnnxTensor> {
        self.floats.get(self.resolve(name))
    }
}

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

/// A packed repeated varint field's values.
fn varints(packed: &[u8]) -> Result<Vec<u64>, String> {
    let mut r = Reader::new(packed);
    let mut out = Vec::new();
    while !r.done() {
        out.push(r.varint()?);
    }
    Ok(out)
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// A decoded `TensorProto`.
enum Tensor {
    Float(String, OnnxTensor),
    Int64(String, Vec<i64>),
    /// Another data type: not needed by the networks here.
    Other,
}

fn tensor(buf: &[u8]) -> Result<Tensor, String> {
    let mut r = Reader::new(buf);
    let (mut name, mut dims, mut data_type) = (String::new(), Vec::new(), 0);
    let (mut data, mut ints, mut raw) = (Vec::new(), Vec::new(), None);
    while !r.done() {
        match r.field()? {
            (1, 0, _, v) => dims.push(v as usize),
            (1, 2, packed, _) => {
                dims.extend(varints(packed)?.into_iter().map(|v| v as usize));
            }
            (2, 0, _, v) => data_type = v,
            (4, 2, packed, _) => data.extend(floats(packed)),
            (4, 5, one, _) => data.extend(floats(one)),
            (5, 0, _, v) => ints.push(i64::from(v as i32)),
            (5, 2, packed, _) => {
                ints.extend(varints(packed)?.into_iter().map(|v| i64::from(v as i32)));
            }
            (7, 0, _, v) => ints.push(v as i64),
            (7, 2, packed, _) => {
                ints.extend(varints(packed)?.into_iter().map(|v| v as i64));
            }
            (9, 2, bytes, _) => raw = Some(bytes),
            (8, 2, s, _) => name = String::from_utf8_lossy(s).into_owned(),
            (13, 2, _, _) => return Err(format!("tensor `{name}` uses external data, which is not supported")),
            _ => {}
        }
    }
    let expected = crate::elements(&dims).ok_or_else(|| format!("tensor `{name}`: shape {dims:?} overflows"))?;
    match data_type {
        FLOAT => {
            if let Some(raw) = raw {
                data.extend(floats(raw));
            }
            if data.len() != expected {
                return Err(format!("tensor `{name}`: {} values for shape {dims:?}", data.len()));
            }
            Ok(Tensor::Float(name, OnnxTensor { dims, data }))
        }
        INT64 => {
            if let Some(raw) = raw {
                ints.extend(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))));
            }
            if ints.len() != expected {
                return Err(format!("tensor `{name}`: {} values for shape {dims:?}", ints.len()));
            }
            Ok(Tensor::Int64(name, ints))
        }
        // Shape arithmetic in some exports (Paddle's `fill_constant`): read as i64.
        INT32 => {
            if let Some(raw) = raw {
                ints.extend(raw.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes")))));
            }
            if ints.len() != expected {
                return Err(format!("tensor `{name}`: {} values for shape {dims:?}", ints.len()));
            }
            Ok(Tensor::Int64(name, ints))
        }
        _ => Ok(Tensor::Other),
    }
}

fn attribute(buf: &[u8], model: &mut OnnxModel, output: &str) -> Result<(String, OnnxAttr), String> {
    let mut r = Reader::new(buf);
    let (mut name, mut attr) = (String::new(), OnnxAttr::Other);
    let (mut list_i, mut list_f) = (Vec::new(), Vec::new());
    while !r.done() {
        match r.field()? {
            (1, 2, s, _) => name = String::from_utf8_lossy(s).into_owned(),
            (2, 5, f, _) => attr = OnnxAttr::Float(floats(f)[0]),
            (3, 0, _, v) => attr = OnnxAttr::Int(v as i64),
            (4, 2, b, _) => attr = OnnxAttr::Bytes(b.to_vec()),
            (5, 2, t, _) => {
                // A `Constant` node's value: kept under the node's output name.
                match tensor(t)? {
                    Tensor::Float(_, t) => {
                        model.floats.insert(output.to_string(), t);
                    }
                    Tensor::Int64(_, v) => {
                        model.ints.insert(output.to_string(), v);
                    }
                    Tensor::Other => {}
                }
                attr = OnnxAttr::Tensor;
            }
            (7, 5, f, _) => list_f.extend(floats(f)),
            (7, 2, packed, _) => list_f.extend(floats(packed)),
            (8, 0, _, v) => list_i.push(v as i64),
            (8, 2, packed, _) => {
                list_i.extend(varints(packed)?.into_iter().map(|v| v as i64));
            }
            _ => {}
        }
    }
    if !list_i.is_empty() {
        attr = OnnxAttr::Ints(list_i);
    } else if !list_f.is_empty() {
        attr = OnnxAttr::Floats(list_f);
    }
    Ok((name, attr))
}

fn node(buf: &[u8], model: &mut OnnxModel) -> Result<OnnxNode, String> {
    let mut r = Reader::new(buf);
    let mut node = OnnxNode { op_type: String::new(), inputs: Vec::new(), outputs: Vec::new(), attributes: Vec::new() };
    let mut attributes = Vec::new();
    while !r.done() {
        match r.field()? {
            (1, 2, s, _) => node.inputs.push(String::from_utf8_lossy(s).into_owned()),
            (2, 2, s, _) => node.outputs.push(String::from_utf8_lossy(s).into_owned()),
            (4, 2, s, _) => node.op_type = String::from_utf8_lossy(s).into_owned(),
            (5, 2, a, _) => attributes.push(a),
            _ => {}
        }
    }
    // Attributes last: a `Constant`'s value is named by the node's output.
    let output = node.outputs.first().cloned().unwrap_or_default();
    for a in attributes {
        node.attributes.push(attribute(a, model, &output)?);
    }
    Ok(node)
}

/// Reads the serialized ONNX `model`: tensors, nodes in order, metadata.
pub fn read(model: &[u8]) -> Result<OnnxModel, String> {
    let mut out = OnnxModel::default();
    let mut graphs = 0;
    let mut r = Reader::new(model);
    while !r.done() {
        match r.field()? {
            (7, 2, graph, _) => {
                graphs += 1;
                let mut g = Reader::new(graph);
                while !g.done() {
                    match g.field()? {
                        (1, 2, n, _) => {
                            let n = node(n, &mut out)?;
                            if let (true, [input, ..], [output, ..]) =
                                (n.op_type == "Identity", &n.inputs[..], &n.outputs[..])
                            {
                                out.identities.insert(output.clone(), input.clone());
                            }
                            out.nodes.push(n);
                        }
                        (5, 2, t, _) => match tensor(t)? {
                            Tensor::Float(name, t) => {
                                out.floats.insert(name, t);
                            }
                            Tensor::Int64(name, v) => {
                                out.ints.insert(name, v);
                            }
                            Tensor::Other => {}
                        },
                        _ => {}
                    }
                }
            }
            (14, 2, entry, _) => {
                let mut e = Reader::new(entry);
                let (mut key, mut value) = (String::new(), String::new());
                while !e.done() {
                    match e.field()? {
                        (1, 2, k, _) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, 2, v, _) => value = String::from_utf8_lossy(v).into_owned(),
                        _ => {}
                    }
                }
                out.metadata.insert(key, value);
            }
            _ => {}
        }
    }
    if graphs == 0 {
        return Err("no graph: not an ONNX model".into());
    }
    Ok(out)
}

/// Every float weight of the serialized ONNX `model` (initializers and `Constant` values), by name.
pub fn initializers(model: &[u8]) -> Result<HashMap<String, OnnxTensor>, String> {
    let out = read(model)?.floats;
    if out.is_empty() {
        return Err("no float weights: not an ONNX model with embedded weights".into());
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
        ld(2, b"the graph name, a field we do not read", &mut graph);
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
    fn reads_int32_tensors_as_ints() {
        // int32_data (field 5) packed, with a negative value (sign-extended 10-byte varint), and raw.
        let mut t = Vec::new();
        varint(1 << 3, &mut t);
        varint(2, &mut t);
        varint(2 << 3, &mut t);
        varint(INT32, &mut t);
        let mut packed = Vec::new();
        varint(200, &mut packed);
        varint(-3i64 as u64, &mut packed);
        ld(5, &packed, &mut t);
        assert!(matches!(tensor(&t).unwrap(), Tensor::Int64(_, v) if v == [200, -3]));
        let mut r = Vec::new();
        varint(1 << 3, &mut r);
        varint(1, &mut r);
        varint(2 << 3, &mut r);
        varint(INT32, &mut r);
        ld(9, &(-7i32).to_le_bytes(), &mut r);
        assert!(matches!(tensor(&r).unwrap(), Tensor::Int64(_, v) if v == [-7]));
    }

    fn attribute_proto(name: &str, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut a = Vec::new();
        ld(1, name.as_bytes(), &mut a);
        body(&mut a);
        a
    }

    #[test]
    fn reads_nodes_attributes_constants_int64_tensors_and_metadata() {
        let mut graph = Vec::new();
        // Constant node holding a float tensor (named by the node's output), then a Conv with
        // int, packed ints and float attributes reading it through an Identity.
        let mut constant = Vec::new();
        ld(2, b"k", &mut constant);
        ld(4, b"Constant", &mut constant);
        ld(
            5,
            &attribute_proto("value", |a| ld(5, &tensor_proto("ignored", &[2], &[0.5, -1.5], false), a)),
            &mut constant,
        );
        ld(1, &constant, &mut graph);
        let mut identity = Vec::new();
        ld(1, b"k", &mut identity);
        ld(2, b"k2", &mut identity);
        ld(4, b"Identity", &mut identity);
        ld(1, &identity, &mut graph);
        let mut conv = Vec::new();
        for i in [&b"x"[..], b"k2"] {
            ld(1, i, &mut conv);
        }
        ld(2, b"y", &mut conv);
        ld(4, b"Conv", &mut conv);
        ld(
            5,
            &attribute_proto("group", |a| {
                varint(3 << 3, a);
                varint(8, a);
            }),
            &mut conv,
        );
        ld(
            5,
            &attribute_proto("pads", |a| {
                let mut packed = Vec::new();
                for v in [0u64, 1, 0, 1] {
                    varint(v, &mut packed);
                }
                ld(8, &packed, a);
            }),
            &mut conv,
        );
        ld(
            5,
            &attribute_proto("alpha", |a| {
                varint(2 << 3 | 5, a);
                a.extend_from_slice(&0.2f32.to_le_bytes());
            }),
            &mut conv,
        );
        ld(1, &conv, &mut graph);
        // An int64 initializer with a negative value (raw data).
        let mut shape = Vec::new();
        varint(1 << 3, &mut shape);
        varint(2, &mut shape);
        varint(2 << 3, &mut shape);
        varint(7, &mut shape);
        let raw: Vec<u8> = [-1i64, 120].iter().flat_map(|v| v.to_le_bytes()).collect();
        ld(9, &raw, &mut shape);
        ld(8, b"shape", &mut shape);
        ld(5, &shape, &mut graph);
        let mut model = Vec::new();
        ld(7, &graph, &mut model);
        let mut entry = Vec::new();
        ld(1, b"character", &mut entry);
        ld(2, "a\nб".as_bytes(), &mut entry);
        ld(14, &entry, &mut model);

        let m = read(&model).unwrap();
        assert_eq!(m.nodes.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["Constant", "Identity", "Conv"]);
        let conv = &m.nodes[2];
        assert_eq!(conv.inputs, ["x", "k2"]);
        assert_eq!(
            (conv.attr_int("group"), conv.attr_ints("pads"), conv.attr_float("alpha")),
            (Some(8), Some(&[0i64, 1, 0, 1][..]), Some(0.2))
        );
        assert_eq!(m.resolve("k2"), "k");
        assert_eq!(m.float("k2").unwrap().data, vec![0.5, -1.5]);
        assert_eq!(m.ints["shape"], vec![-1, 120]);
        assert_eq!(m.metadata["character"], "a\nб");
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
