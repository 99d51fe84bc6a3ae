//! ncnn `.param` text graphs (Tencent ncnn's format; the `.bin` weights are read where the graph
//! is built, gpubackend::models::ncnn): `7767517`, `layer_count blob_count`, then per layer
//! `Type name bottoms tops <bottom names> <top names> k=v …`, arrays as `-233NN=len,v0,…`.

use std::collections::HashMap;

const MAGIC: &str = "7767517";

/// A parameter value: one number, or an array (`-233NN=`).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    One(f64),
    Array(Vec<f64>),
}

/// One layer of a `.param` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub kind: String,
    pub name: String,
    pub bottoms: Vec<String>,
    pub tops: Vec<String>,
    pub params: HashMap<i32, Param>,
}

impl Layer {
    pub fn one(&self, key: i32) -> Option<f64> {
        match self.params.get(&key) {
            Some(Param::One(v)) => Some(*v),
            _ => None,
        }
    }

    /// An integer parameter (its default when absent).
    pub fn int(&self, key: i32, default: i64) -> Result<i64, String> {
        match self.params.get(&key) {
            None => Ok(default),
            Some(Param::One(v)) if v.fract() == 0.0 => Ok(*v as i64),
            Some(v) => Err(format!("{} `{}`: parameter {key} = {v:?} is not an integer", self.kind, self.name)),
        }
    }

    pub fn float(&self, key: i32, default: f64) -> f64 {
        self.one(key).unwrap_or(default)
    }

    pub fn array(&self, key: i32) -> Option<&[f64]> {
        match self.params.get(&key) {
            Some(Param::Array(v)) => Some(v),
            _ => None,
        }
    }

    pub fn usize(&self, key: i32, default: usize) -> Result<usize, String> {
        let v = self.int(key, default as i64)?;
        usize::try_from(v).map_err(|_| format!("{} `{}`: parameter {key} = {v} is negative", self.kind, self.name))
    }
}

/// Parses a `.param` file's text.
pub fn parse_param(text: &str) -> Result<Vec<Layer>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(MAGIC) {
        return Err(format!("not an ncnn param file (the first line is not {MAGIC})"));
    }
    let counts: Vec<usize> = lines
        .next()
        .ok_or("no layer and blob counts")?
        .split_whitespace()
        .map(|v| v.parse().map_err(|_| format!("bad count `{v}`")))
        .collect::<Result<_, _>>()?;
    let [layer_count, _blobs] = counts[..] else { return Err("the counts line is not `layers blobs`".into()) };
    // The count is the file's word: no more than one layer per line is reserved (fuzz/regressions).
    let mut layers = Vec::with_capacity(layer_count.min(text.lines().count()));
    for line in lines {
        let mut f = line.split_whitespace();
        let mut next = |what: &str| f.next().ok_or_else(|| format!("layer line `{line}`: no {what}"));
        let kind = next("type")?.to_string();
        let name = next("name")?.to_string();
        let count = |v: &str| v.parse::<usize>().map_err(|_| format!("layer `{name}`: bad blob count `{v}`"));
        let (nb, nt) = (count(next("bottom count")?)?, count(next("top count")?)?);
        let bottoms = (0..nb).map(|_| next("bottom").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
        let tops = (0..nt).map(|_| next("top").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
        let mut params = HashMap::new();
        for kv in f {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("layer `{name}`: parameter `{kv}`"))?;
            let k: i32 = k.parse().map_err(|_| format!("layer `{name}`: parameter key `{k}`"))?;
            let num = |s: &str| s.parse::<f64>().map_err(|_| format!("layer `{name}`: value `{s}` of {k}"));
            if k <= -23300 {
                let mut items = v.split(',');
                let len: usize =
                    items.next().unwrap_or("").parse().map_err(|_| format!("layer `{name}`: array {k} length"))?;
                let values = items.map(num).collect::<Result<Vec<_>, _>>()?;
                if values.len() != len {
                    return Err(format!("layer `{name}`: array {k} says {len} values, has {}", values.len()));
                }
                params.insert(-k - 23300, Param::Array(values));
            } else {
                params.insert(k, Param::One(num(v)?));
            }
        }
        layers.push(Layer { kind, name, bottoms, tops, params });
    }
    if layers.len() != layer_count {
        return Err(format!("the file says {layer_count} layers and has {}", layers.len()));
    }
    Ok(layers)
}
