//! What travels on the broker, as stream entry fields: a job (one model input, or an uploaded
//! file, with its reply address, deadline and delivery count) and its reply (the model output,
//! the model's result for the file, or why there is none).
//! Pure: the Redis I/O is in `api` and `worker`.

use std::collections::HashMap;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::config::PayloadEncoding;
use crate::error::FileStatus;
use crate::pipelines::preprocess::ModelInput;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("broker entry lacks field `{0}`")]
    Missing(&'static str),
    #[error("broker entry field `{field}` is invalid: {message}")]
    Invalid { field: &'static str, message: String },
}

/// One model input on a model stream.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEntry {
    /// Unique per job (`<api replica>:<sequence>`): the API answers each job once, by this id.
    pub id: String,
    /// The reply stream of the API replica that waits for it.
    pub reply: String,
    /// Unix milliseconds after which nobody waits for the answer (workers skip the job).
    pub deadline_ms: u64,
    /// Deliveries so far that ended with the worker gone (redeliveries carry it + 1).
    pub attempts: u32,
    pub poisoned: bool,
    pub size: Option<[usize; 2]>,
    pub payload: Payload,
}

/// A model input, compact.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Little-endian IEEE half floats.
    F16(Vec<u8>),
    /// `value = min + q × step`.
    U8 { min: f32, step: f32, data: Vec<u8> },
    /// The uploaded image file itself: the job of a model whose whole pipeline runs on the worker
    /// (face, text, plates: their networks' inputs are 5–50× the file's bytes).
    Image(Vec<u8>),
}

impl Payload {
    pub fn encode(values: &[f32], encoding: PayloadEncoding) -> Self {
        match encoding {
            PayloadEncoding::F16 => {
                // Slice conversion: 8 values per F16C instruction where the CPU has it (detected
                // at run time), instead of one call per value.
                let mut half = vec![0u16; values.len()];
                half.reinterpret_cast_mut::<f16>().convert_from_f32_slice(values);
                let mut bytes = Vec::with_capacity(2 * half.len());
                for h in half {
                    bytes.extend_from_slice(&h.to_le_bytes());
                }
                Self::F16(bytes)
            }
            PayloadEncoding::U8 => {
                let (min, max) =
                    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let (min, max) = if values.is_empty() { (0.0, 0.0) } else { (min, max) };
                let step = if max > min { (max - min) / 255.0 } else { 1.0 };
                let data = values.iter().map(|v| ((v - min) / step).round().clamp(0.0, 255.0) as u8).collect();
                Self::U8 { min, step, data }
            }
        }
    }

    /// The model input's values; None for an image file.
    pub fn decode(&self) -> Option<Vec<f32>> {
        match self {
            Self::F16(bytes) => {
                let half: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
                let mut values = vec![0f32; half.len()];
                half.reinterpret_cast::<f16>().convert_to_f32_slice(&mut values);
                Some(values)
            }
            Self::U8 { min, step, data } => Some(data.iter().map(|&q| min + f32::from(q) * step).collect()),
            Self::Image(_) => None,
        }
    }

    /// Bytes on the wire (the data field).
    pub fn len(&self) -> usize {
        match self {
            Self::F16(b) | Self::Image(b) => b.len(),
            Self::U8 { data, .. } => data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stream entry fields as name → bytes, the way they come back from Redis.
pub type Fields = HashMap<String, Vec<u8>>;

fn text(fields: &Fields, name: &'static str) -> Result<String, CodecError> {
    let v = fields.get(name).ok_or(CodecError::Missing(name))?;
    String::from_utf8(v.clone()).map_err(|e| CodecError::Invalid { field: name, message: e.to_string() })
}

fn number<T: std::str::FromStr>(fields: &Fields, name: &'static str) -> Result<T, CodecError>
where
    T::Err: std::fmt::Display,
{
    text(fields, name)?.parse().map_err(|e: T::Err| CodecError::Invalid { field: name, message: e.to_string() })
}

fn float(fields: &Fields, name: &'static str) -> Result<f32, CodecError> {
    let v = fields.get(name).ok_or(CodecError::Missing(name))?;
    let b: [u8; 4] =
        v.as_slice().try_into().map_err(|_| CodecError::Invalid { field: name, message: "not 4 bytes".into() })?;
    Ok(f32::from_le_bytes(b))
}

impl JobEntry {
    pub fn new(
        id: String,
        reply: String,
        deadline_ms: u64,
        input: &ModelInput,
        poisoned: bool,
        enc: PayloadEncoding,
    ) -> Self {
        Self {
            id,
            reply,
            deadline_ms,
            attempts: 0,
            poisoned,
            size: input.size,
            payload: Payload::encode(&input.data, enc),
        }
    }

    /// A job of a whole image: the model's pipeline runs on the worker.
    pub fn image(id: String, reply: String, deadline_ms: u64, bytes: Vec<u8>, poisoned: bool) -> Self {
        Self { id, reply, deadline_ms, attempts: 0, poisoned, size: None, payload: Payload::Image(bytes) }
    }

    /// The model input (None for an image job).
    pub fn input(&self) -> Option<ModelInput> {
        Some(ModelInput { data: self.payload.decode()?, size: self.size })
    }

    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("id", self.id.clone().into_bytes()),
            ("reply", self.reply.clone().into_bytes()),
            ("deadline", self.deadline_ms.to_string().into_bytes()),
            ("attempts", self.attempts.to_string().into_bytes()),
            ("poisoned", if self.poisoned { b"1".to_vec() } else { b"0".to_vec() }),
        ];
        if let Some([h, w]) = self.size {
            f.push(("size", format!("{h}x{w}").into_bytes()));
        }
        match &self.payload {
            Payload::F16(b) => {
                f.push(("enc", b"f16".to_vec()));
                f.push(("data", b.clone()));
            }
            Payload::Image(b) => {
                f.push(("enc", b"image".to_vec()));
                f.push(("data", b.clone()));
            }
            Payload::U8 { min, step, data } => {
                f.push(("enc", b"u8".to_vec()));
                f.push(("min", min.to_le_bytes().to_vec()));
                f.push(("step", step.to_le_bytes().to_vec()));
                f.push(("data", data.clone()));
            }
        }
        f
    }

    /// The entry's id and reply address alone: enough to answer a job whose payload is unreadable.
    pub fn address(fields: &Fields) -> Result<(String, String), CodecError> {
        Ok((text(fields, "id")?, text(fields, "reply")?))
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, CodecError> {
        let (id, reply) = Self::address(fields)?;
        let size = match fields.get("size") {
            None => None,
            Some(_) => {
                let s = text(fields, "size")?;
                let bad = || CodecError::Invalid { field: "size", message: format!("`{s}` is not <h>x<w>") };
                let (h, w) = s.split_once('x').ok_or_else(bad)?;
                Some([h.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?])
            }
        };
        let data = fields.get("data").ok_or(CodecError::Missing("data"))?.clone();
        let payload = match text(fields, "enc")?.as_str() {
            "f16" if data.len() % 2 == 0 => Payload::F16(data),
            "f16" => return Err(CodecError::Invalid { field: "data", message: "odd length for f16".into() }),
            "u8" => Payload::U8 { min: float(fields, "min")?, step: float(fields, "step")?, data },
            "image" => Payload::Image(data),
            other => return Err(CodecError::Invalid { field: "enc", message: format!("unknown encoding `{other}`") }),
        };
        Ok(Self {
            id,
            reply,
            deadline_ms: number(fields, "deadline")?,
            attempts: number(fields, "attempts")?,
            poisoned: fields.get("poisoned").is_some_and(|v| v == b"1"),
            size,
            payload,
        })
    }
}

/// A worker's answer to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyEntry {
    pub id: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        output: Vec<f32>,
        queue_wait_us: u64,
        inference_us: u64,
        batch_size: usize,
    },
    /// An image job's result: the model's own answer for the image, serialized by its handler
    /// (the face model's faces as floats, the text and plates models' readings as JSON), and how
    /// long the worker took.
    Read {
        body: Vec<u8>,
        took_us: u64,
    },
    /// Per-file status (permanent or temporary) and why.
    Failed {
        status: FileStatus,
        message: String,
    },
}

impl ReplyEntry {
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![("id", self.id.clone().into_bytes())];
        match &self.outcome {
            Outcome::Done { output, queue_wait_us, inference_us, batch_size } => {
                f.push(("status", b"0".to_vec()));
                f.push(("out", output.iter().flat_map(|v| v.to_le_bytes()).collect()));
                f.push(("queue_wait_us", queue_wait_us.to_string().into_bytes()));
                f.push(("inference_us", inference_us.to_string().into_bytes()));
                f.push(("batch_size", batch_size.to_string().into_bytes()));
            }
            Outcome::Read { body, took_us } => {
                f.push(("status", b"0".to_vec()));
                f.push(("body", body.clone()));
                f.push(("took_us", took_us.to_string().into_bytes()));
            }
            Outcome::Failed { status, message } => {
                f.push(("status", status.to_string().into_bytes()));
                f.push(("error", message.clone().into_bytes()));
            }
        }
        f
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, CodecError> {
        let id = text(fields, "id")?;
        let code: u8 = number(fields, "status")?;
        let status = FileStatus::from_code(code).ok_or_else(|| CodecError::Invalid {
            field: "status",
            message: format!("{code} is not a per-file status"),
        })?;
        let outcome = if status == FileStatus::Ok && fields.contains_key("body") {
            Outcome::Read { body: fields["body"].clone(), took_us: number(fields, "took_us")? }
        } else if status == FileStatus::Ok {
            let out = fields.get("out").ok_or(CodecError::Missing("out"))?;
            if out.len() % 4 != 0 {
                return Err(CodecError::Invalid { field: "out", message: "length not a multiple of 4".into() });
            }
            Outcome::Done {
                output: out.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                queue_wait_us: number(fields, "queue_wait_us")?,
                inference_us: number(fields, "inference_us")?,
                batch_size: number(fields, "batch_size")?,
            }
        } else {
            Outcome::Failed { status, message: text(fields, "error")? }
        };
        Ok(Self { id, outcome })
    }
}

/// What a worker does with a job it took back from a dead consumer (XAUTOCLAIM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Put it on the stream again with this delivery count.
    Redeliver { attempts: u32 },
    /// It was delivered `max_deliveries` times and each time its worker died: dead-letter it and
    /// answer it with per-file status 1.
    DeadLetter,
}

/// `attempts_before`: the entry's `attempts` (deliveries before the one whose worker died), so
/// the job has been delivered `attempts_before + 1` times.
pub fn reclaim(attempts_before: u32, max_deliveries: u32) -> Reclaim {
    let attempts = attempts_before + 1;
    if attempts >= max_deliveries { Reclaim::DeadLetter } else { Reclaim::Redeliver { attempts } }
}

/// Converts a Redis field map (`StreamId::map`) into bytes by field name; values that are not
/// strings are dropped (and then reported as missing). Takes the map: a payload is not copied.
pub fn fields_of(map: HashMap<String, redis::Value>) -> Fields {
    map.into_iter()
        .filter_map(|(k, v)| match v {
            redis::Value::BulkString(b) => Some((k, b)),
            redis::Value::SimpleString(s) => Some((k, s.into_bytes())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_fields(f: Vec<(&'static str, Vec<u8>)>) -> Fields {
        f.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn sample_input() -> ModelInput {
        ModelInput::sized((0..600).map(|i| (i as f32 * 0.37).sin() * 2.3 - 0.1).collect(), 10, 20)
    }

    #[test]
    fn f16_payload_is_half_the_bytes_within_half_precision() {
        let input = sample_input();
        let job = JobEntry::new("a:1".into(), "r".into(), 5, &input, false, PayloadEncoding::F16);
        assert_eq!(job.payload.len(), 2 * input.data.len());
        // The slice conversion is the per-value IEEE rounding, bit for bit, both ways.
        let one_by_one: Vec<u8> = input.data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        assert_eq!(job.payload, Payload::F16(one_by_one.clone()));
        let back_one_by_one: Vec<f32> =
            one_by_one.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(job.payload.decode(), Some(back_one_by_one));
        let back = JobEntry::from_fields(&roundtrip_fields(job.to_fields())).unwrap();
        assert_eq!(back, job);
        let decoded = back.input().unwrap();
        assert_eq!(decoded.size, Some([10, 20]));
        for (a, b) in input.data.iter().zip(&decoded.data) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn u8_payload_is_a_quarter_of_the_bytes_within_half_a_step() {
        let input = sample_input();
        let job = JobEntry::new("a:2".into(), "r".into(), 5, &input, true, PayloadEncoding::U8);
        assert_eq!(job.payload.len(), input.data.len());
        let back = JobEntry::from_fields(&roundtrip_fields(job.to_fields())).unwrap();
        assert_eq!(back, job);
        assert!(back.poisoned);
        let Payload::U8 { step, .. } = back.payload else { panic!("u8 expected") };
        assert!((step - 4.6 / 255.0).abs() < 1e-3);
        for (a, b) in input.data.iter().zip(back.input().unwrap().data) {
            assert!((a - b).abs() <= step / 2.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn constant_and_empty_inputs_survive_u8() {
        for data in [vec![0.7f32; 12], vec![]] {
            let p = Payload::encode(&data, PayloadEncoding::U8);
            assert_eq!(p.decode(), Some(data));
        }
    }

    #[test]
    fn image_jobs_carry_the_file_itself() {
        let job = JobEntry::image("a:5".into(), "r".into(), 9, vec![0xff, 0xd8, 1, 2, 3], true);
        let back = JobEntry::from_fields(&roundtrip_fields(job.to_fields())).unwrap();
        assert_eq!(back, job);
        assert_eq!(back.payload.len(), 5);
        assert_eq!(back.input(), None);
    }

    #[test]
    fn fixed_size_inputs_have_no_size_field() {
        let job =
            JobEntry::new("a:3".into(), "r".into(), 1, &ModelInput::fixed(vec![1.0; 4]), false, PayloadEncoding::F16);
        let f = job.to_fields();
        assert!(!f.iter().any(|(k, _)| *k == "size"));
        assert_eq!(JobEntry::from_fields(&roundtrip_fields(f)).unwrap().size, None);
    }

    #[test]
    fn malformed_jobs_name_the_field() {
        let job = JobEntry::new("a:4".into(), "r".into(), 1, &sample_input(), false, PayloadEncoding::F16);
        let mut f = roundtrip_fields(job.to_fields());
        f.insert("size".into(), b"10by20".to_vec());
        assert!(matches!(JobEntry::from_fields(&f), Err(CodecError::Invalid { field: "size", .. })));
        f.insert("size".into(), b"10x20".to_vec());
        f.remove("data");
        assert_eq!(JobEntry::from_fields(&f), Err(CodecError::Missing("data")));
        f.insert("data".into(), vec![1, 2, 3]);
        assert!(matches!(JobEntry::from_fields(&f), Err(CodecError::Invalid { field: "data", .. })));
        // The address alone still reads, so the job can be answered.
        assert_eq!(JobEntry::address(&f).unwrap(), ("a:4".to_string(), "r".to_string()));
    }

    #[test]
    fn replies_roundtrip() {
        for outcome in [
            Outcome::Done { output: vec![0.25, -3.5, 1e-8], queue_wait_us: 12, inference_us: 3400, batch_size: 4 },
            Outcome::Read { body: br#"[{"text":"5AU5341"}]"#.to_vec(), took_us: 81_000 },
            Outcome::Read { body: vec![], took_us: 0 },
            Outcome::Failed { status: FileStatus::Permanent, message: "inference failed on this image: boom".into() },
        ] {
            let r = ReplyEntry { id: "x:9".into(), outcome };
            assert_eq!(ReplyEntry::from_fields(&roundtrip_fields(r.to_fields())).unwrap(), r);
        }
    }

    #[test]
    fn reclaimed_jobs_are_redelivered_until_the_limit() {
        assert_eq!(reclaim(0, 3), Reclaim::Redeliver { attempts: 1 });
        assert_eq!(reclaim(1, 3), Reclaim::Redeliver { attempts: 2 });
        assert_eq!(reclaim(2, 3), Reclaim::DeadLetter);
        assert_eq!(reclaim(0, 1), Reclaim::DeadLetter);
    }
}
