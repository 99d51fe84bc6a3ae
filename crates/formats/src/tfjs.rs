//! TensorFlow.js models: `model.json` (topology + weights manifest) and the weight shards it
//! names, read by the manifest's rules (float32, int32; float16 / uint8 / uint16 quantisation
//! dequantised as TensorFlow.js does). Both kinds `tfjs-converter` writes: a graph model (TensorFlow
//! nodes) and a layers model (a Keras model: its layers, their configs and how they connect). The
//! runnable graph is built in gpubackend::models::tfjs.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct ModelJson {
    #[serde(rename = "modelTopology")]
    topology: Value,
    #[serde(rename = "weightsManifest")]
    manifest: Vec<ManifestGroup>,
}

/// What a model computes: TensorFlow nodes (a graph model) or Keras layers (a layers model).
#[derive(Debug)]
pub enum Topology {
    Graph(Vec<Node>),
    Layers(Layers),
}

/// A Keras model as `tfjs-converter` (or `model.save` in TF.js) writes it: its layers in the
/// order they were built, the model's input and output layers.
#[derive(Debug, Clone)]
pub struct Layers {
    pub layers: Vec<Layer>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// One Keras layer: its class (`Conv2D`, `BatchNormalization` …), its name (its weights are
/// `<name>/kernel` …), its config as written, and the layers its inputs come from.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub class_name: String,
    pub config: Value,
    pub inbound: Vec<String>,
}

impl Layer {
    /// A config value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// A pair of sizes (`kernel_size`, `strides` …), written as one number or two.
    pub fn pair(&self, key: &str) -> Option<[usize; 2]> {
        let v = self.get(key)?;
        let n = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        match v.as_array() {
            Some(a) if a.len() == 2 => Some([n(&a[0])?, n(&a[1])?]),
            Some(_) => None,
            None => n(v).map(|x| [x, x]),
        }
    }
}

/// Parses a layers model's topology: `{keras_version, backend, model_config: {class_name,
/// config}}` or the `{class_name, config}` itself; a `Model`/`Functional` names each layer's
/// inbound layers (Keras 2 lists or Keras 3 `keras_history`), a `Sequential` chains its layers.
fn layers(topology: &Value) -> Result<Layers, String> {
    let model = topology.get("model_config").unwrap_or(topology);
    let class = model.get("class_name").and_then(Value::as_str).ok_or("a layers model without class_name")?;
    let config = model.get("config").ok_or("a layers model without config")?;
    let list = config.get("layers").or(config.as_array().map(|_| config)).and_then(Value::as_array);
    let list = list.ok_or("a layers model without layers")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, l) in list.iter().enumerate() {
        let class_name = l.get("class_name").and_then(Value::as_str).ok_or(format!("layer {i}: no class_name"))?;
        let config = l.get("config").cloned().unwrap_or(Value::Null);
        let name = l
            .get("name")
            .or(config.get("name"))
            .and_then(Value::as_str)
            .ok_or(format!("layer {i} ({class_name}): no name"))?
            .to_string();
        let inbound = match l.get("inbound_nodes").and_then(Value::as_array) {
            None => Vec::new(),
            Some(nodes) if nodes.len() > 1 => {
                return Err(format!("layer {name}: called {} times (shared layers are not supported)", nodes.len()));
            }
            Some(nodes) => nodes.first().map(inbound_names).unwrap_or_default(),
        };
        out.push(Layer { name, class_name: class_name.to_string(), config, inbound });
    }
    let names = |key: &str| -> Vec<String> {
        match config.get(key).and_then(Value::as_array) {
            // [[name, 0, 0], …] (Keras 2) or [name, 0, 0] (one, Keras 3).
            Some(a) if a.first().is_some_and(Value::is_string) => {
                a.first().and_then(Value::as_str).map(|s| vec![s.to_string()]).unwrap_or_default()
            }
            Some(a) => a.iter().filter_map(|x| x.get(0)?.as_str().map(str::to_string)).collect(),
            None => Vec::new(),
        }
    };
    let (mut inputs, mut outputs) = (names("input_layers"), names("output_layers"));
    match class {
        "Sequential" => {
            // Each layer takes the one before it; the first may be the InputLayer.
            for i in 1..out.len() {
                let before = out[i - 1].name.clone();
                out[i].inbound = vec![before];
            }
            let first = out.first().ok_or("a Sequential model without layers")?;
            if first.class_name != "InputLayer" {
                let shape = first.get("batch_input_shape").or(first.get("batch_shape")).cloned();
                let input = Layer {
                    name: format!("{}_input", first.name),
                    class_name: "InputLayer".into(),
                    config: serde_json::json!({ "batch_input_shape": shape }),
                    inbound: Vec::new(),
                };
                out[0].inbound = vec![input.name.clone()];
                out.insert(0, input);
            }
            inputs = vec![out[0].name.clone()];
            outputs = out.last().map(|l| vec![l.name.clone()]).unwrap_or_default();
        }
        "Model" | "Functional" => {
            if inputs.is_empty() || outputs.is_empty() {
                return Err(format!("a {class} without input_layers or output_layers"));
            }
        }
        other => return Err(format!("a layers model of class {other} (Model, Functional or Sequential)")),
    }
    Ok(Layers { layers: out, inputs, outputs })
}

/// The layers one inbound node takes: Keras 2 writes `[[name, node, tensor, kwargs], …]`,
/// Keras 3 `{args: [{class_name: "__keras_tensor__", config: {keras_history: [name, …]}}], …}`.
fn inbound_names(node: &Value) -> Vec<String> {
    match node {
        Value::Array(items) => items.iter().filter_map(|i| i.get(0)?.as_str().map(str::to_string)).collect(),
        Value::Object(_) => {
            let mut found = Vec::new();
            history(node, &mut found);
            found
        }
        _ => Vec::new(),
    }
}

fn history(v: &Value, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(name) = map.get("keras_history").and_then(|h| h.get(0)).and_then(Value::as_str) {
                found.push(name.to_string());
                return;
            }
            map.values().for_each(|x| history(x, found));
        }
        Value::Array(items) => items.iter().for_each(|x| history(x, found)),
        _ => {}
    }
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

/// A model as read: its topology and its weights by name.
#[derive(Debug)]
pub struct TfjsModel {
    pub topology: Topology,
    pub weights: HashMap<String, Weight>,
}

impl TfjsModel {
    /// `model.json`'s text and a reader of the weight files it names.
    pub fn parse(json: &[u8], mut read: impl FnMut(&str) -> Result<Vec<u8>, String>) -> Result<Self, String> {
        let model: ModelJson = serde_json::from_slice(json).map_err(|e| format!("not a TF.js model: {e}"))?;
        let topology = match model.topology.get("node") {
            Some(nodes) => Topology::Graph(
                serde_json::from_value(nodes.clone()).map_err(|e| format!("not a TF.js graph model: {e}"))?,
            ),
            None if model.topology.is_object() => {
                Topology::Layers(layers(&model.topology).map_err(|e| format!("not a TF.js layers model: {e}"))?)
            }
            None => return Err("not a TF.js model: modelTopology is not an object".into()),
        };
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
        Ok(Self { topology, weights })
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

impl TfjsModel {
    /// A graph model's nodes (none for a layers model).
    pub fn nodes(&self) -> &[Node] {
        match &self.topology {
            Topology::Graph(nodes) => nodes,
            Topology::Layers(_) => &[],
        }
    }
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
