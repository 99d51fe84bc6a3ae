//! TensorFlow.js graph models: `model.json` (topology + weights manifest) and the weight shards it
//! names, read by the manifest's rules (float32, int32; float16 / uint8 / uint16 quantisation
//! dequantised as TensorFlow.js does). The graph is built in gpubackend::models::tfjs.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct ModelJson {
    #[serde(rename = "modelTopology")]
    topology: Topology,
    #[serde(rename = "weightsManifest")]
    manifest: Vec<ManifestGroup>,
}

#[derive(Debug, Deserialize)]
struct Topology {
    node: Vec<Node>,
}

/// One TensorFlow node: its op, its inputs (`name`, `name:k` for output k, `^name` for a control
/// dependency) and its attributes as the converter wrote them.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: String,
    #[serde(default)]
    pub input: Vec<String>,
    #[serde(default)]
    pub attr: HashMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct ManifestGroup {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Debug, Clone, Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Debug, Clone, Deserialize)]
struct Quantization {
    dtype: String,
    #[serde(default)]
    scale: Option<f32>,
    #[serde(default)]
    min: Option<f32>,
}

/// A weight's values after dequantisation.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Weight {
    pub fn floats(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            Values::I32(_) => None,
        }
    }

    pub fn ints(&self) -> Option<&[i32]> {
        match &self.values {
            Values::I32(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// A graph model as read: its nodes in graph order and its weights by name.
#[derive(Debug)]
pub struct TfjsModel {
    pub nodes: Vec<Node>,
    pub weights: HashMap<String, Weight>,
}

impl TfjsModel {
    /// `model.json`'s text and a reader of the weight files it names.
    pub fn parse(json: &[u8], mut read: impl FnMut(&str) -> Result<Vec<u8>, String>) -> Result<Self, String> {
        let model: ModelJson = serde_json::from_slice(json).map_err(|e| format!("not a TF.js graph model: {e}"))?;
        let mut weights = HashMap::new();
        for group in &model.manifest {
            // A group's weights lie one after another over its shards, concatenated.
            let mut data = Vec::new();
            for path in &group.paths {
                data.extend(read(path)?);
            }
            let mut at = 0;
            for spec in &group.weights {
                let (weight, used) = decode(spec, &data[at.min(data.len())..])?;
                at += used;
                weights.insert(spec.name.clone(), weight);
            }
            if at != data.len() {
                return Err(format!("weight group {:?}: {} bytes, the manifest uses {at}", group.paths, data.len()));
            }
        }
        Ok(Self { nodes: model.topology.node, weights })
    }
}

/// One weight from the start of `data`: its values and the bytes it took.
fn decode(spec: &WeightSpec, data: &[u8]) -> Result<(Weight, usize), String> {
    let n = crate::elements(&spec.shape)
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| format!("weight {}: shape {:?} overflows", spec.name, spec.shape))?;
    let q = spec.quantization.as_ref();
    let width = match q.map(|q| q.dtype.as_str()) {
        None => 4,
        Some("float16" | "uint16") => 2,
        Some("uint8") => 1,
        Some(other) => return Err(format!("weight {}: unknown quantisation {other}", spec.name)),
    };
    let bytes = data
        .get(..n * width)
        .ok_or_else(|| format!("weight {}: {} bytes needed, {} left", spec.name, n * width, data.len()))?;
    let raw: Vec<f32> = match q {
        None if spec.dtype == "int32" => {
            let v = bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            return Ok((Weight { shape: spec.shape.clone(), values: Values::I32(v) }, bytes.len()));
        }
        None if spec.dtype == "float32" => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        None => return Err(format!("weight {}: unsupported dtype {}", spec.name, spec.dtype)),
        Some(q) if q.dtype == "float16" => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        Some(q) => {
            let (Some(scale), Some(min)) = (q.scale, q.min) else {
                return Err(format!("weight {}: {} quantisation without scale and min", spec.name, q.dtype));
            };
            let code = |i: usize| -> f32 {
                if width == 1 {
                    f32::from(bytes[i])
                } else {
                    f32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]))
                }
            };
            (0..n).map(|i| code(i) * scale + min).collect()
        }
    };
    let values = match spec.dtype.as_str() {
        "float32" => Values::F32(raw),
        "int32" => Values::I32(raw.iter().map(|v| v.round() as i32).collect()),
        other => return Err(format!("weight {}: unsupported dtype {other}", spec.name)),
    };
    Ok((Weight { shape: spec.shape.clone(), values }, bytes.len()))
}

impl Node {
    fn attr(&self, name: &str) -> Option<&Value> {
        self.attr.get(name)
    }

    /// A string attribute (`{"s": base64}`).
    pub fn attr_str(&self, name: &str) -> Option<String> {
        let s = self.attr(name)?.get("s")?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        String::from_utf8(bytes).ok()
    }

    /// An int list attribute (`{"list": {"i": ["1", "2", …]}}`; empty when the list is).
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        let list = self.attr(name)?.get("list")?;
        Some(
            list.get("i")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter().filter_map(|x| x.as_str().and_then(|s| s.parse().ok()).or_else(|| x.as_i64())).collect()
                })
                .unwrap_or_default(),
        )
    }

    /// A string list attribute, decoded.
    pub fn attr_strs(&self, name: &str) -> Vec<String> {
        let Some(list) = self.attr(name).and_then(|a| a.get("list")).and_then(|l| l.get("s")) else {
            return Vec::new();
        };
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s.as_str()?).ok())
            .filter_map(|b| String::from_utf8(b).ok())
            .collect()
    }

    pub fn attr_bool(&self, name: &str) -> Option<bool> {
        self.attr(name)?.get("b")?.as_bool()
    }

    /// The data inputs (control dependencies left out).
    pub fn data_inputs(&self) -> Vec<String> {
        self.input.iter().filter(|i| !i.starts_with('^')).cloned().collect()
    }
}
