//! A `multipart/form-data` upload read into [`Upload`] (the `meta` field and the image parts),
//! enforcing the byte limits while streaming, before anything large is buffered.

use actix_multipart::Multipart;
use actix_web::error::PayloadError;
use actix_web::http::header::HeaderMap;
use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};

/// The byte and count limits of one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_request_bytes: usize,
    pub max_meta_bytes: usize,
}

/// Why an upload or its images are refused: the request's message, in the Vision envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("invalid multipart/form-data request: {0}")]
    Invalid(String),
    #[error("request is too large: the limit is {0} bytes")]
    RequestTooLarge(usize),
    #[error("too many images: at most {0} per request")]
    TooManyImages(usize),
    #[error("meta is too large: the limit is {0} bytes")]
    MetaTooLarge(usize),
    #[error("image {0} is too large: the limit is {1} bytes")]
    ImageTooLarge(String, usize),
    #[error("images is required non-empty")]
    NoImages,
    #[error("image name is required non-empty")]
    UnnamedImage,
    #[error("duplicate image name: {0}")]
    DuplicateName(String),
    #[error("could not get image by name {0}: http: no such file")]
    NoSuchFile(String),
    #[error("empty image")]
    EmptyImage,
}

/// An upload as received: not yet validated against `meta`.
#[derive(Debug, Default)]
pub struct Upload {
    pub meta: Option<Bytes>,
    /// Image parts by form field name, in arrival order.
    pub files: Vec<(String, Bytes)>,
}

impl Upload {
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }

    /// The images `meta` names, in its order, with the documented request errors: none, too
    /// many, an unnamed or duplicate name, a name with no part, an empty part.
    pub fn images(&self, names: &[&str], limits: &UploadLimits) -> Result<Vec<(String, Bytes)>, UploadError> {
        if names.is_empty() {
            return Err(UploadError::NoImages);
        }
        if names.len() > limits.max_images {
            return Err(UploadError::TooManyImages(limits.max_images));
        }
        let mut out = Vec::with_capacity(names.len());
        for (i, &name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(UploadError::UnnamedImage);
            }
            if names[..i].contains(&name) {
                return Err(UploadError::DuplicateName(name.into()));
            }
            let bytes = self.file(name).ok_or_else(|| UploadError::NoSuchFile(name.into()))?;
            if bytes.is_empty() {
                return Err(UploadError::EmptyImage);
            }
            out.push((name.to_string(), bytes.clone()));
        }
        Ok(out)
    }
}

/// Reads the form of a request with `headers` from `body`.
///
/// actix-multipart 0.7 can wait forever on a body that ends inside a part right after a CR
/// (`Pending` once the body is over, nothing left to wake it; found by fuzz/, kept in
/// fuzz/regressions/multipart/): once the body has ended, waiting is a malformed form, refused.
pub async fn read<S>(headers: &HeaderMap, body: S, limits: &UploadLimits) -> Result<Upload, UploadError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    let ended = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = ended.clone();
    let body = body.chain(futures_util::stream::poll_fn(move |_| {
        flag.set(true);
        std::task::Poll::Ready(None)
    }));
    let mut form = std::pin::pin!(read_form(headers, body, limits));
    std::future::poll_fn(|cx| match form.as_mut().poll(cx) {
        std::task::Poll::Pending if ended.get() => {
            std::task::Poll::Ready(Err(UploadError::Invalid("the body ended inside a form field".into())))
        }
        other => other,
    })
    .await
}

async fn read_form<S>(headers: &HeaderMap, body: S, limits: &UploadLimits) -> Result<Upload, UploadError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    let bad = |e: actix_multipart::MultipartError| UploadError::Invalid(e.to_string());
    let mut form = Multipart::new(headers, body);
    let mut upload = Upload::default();
    let mut total = 0usize;
    while let Some(mut field) = form.try_next().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_meta = name == "meta";
        if !is_meta && upload.files.len() >= limits.max_images {
            return Err(UploadError::TooManyImages(limits.max_images));
        }
        let limit = if is_meta { limits.max_meta_bytes } else { limits.max_image_bytes };
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.try_next().await.map_err(bad)? {
            total += chunk.len();
            if total > limits.max_request_bytes {
                return Err(UploadError::RequestTooLarge(limits.max_request_bytes));
            }
            if buf.len() + chunk.len() > limit {
                return Err(if is_meta {
                    UploadError::MetaTooLarge(limit)
                } else {
                    UploadError::ImageTooLarge(name, limit)
                });
            }
            buf.extend_from_slice(&chunk);
        }
        if is_meta {
            upload.meta = Some(buf.freeze());
        } else {
            upload.files.push((name, buf.freeze()));
        }
    }
    Ok(upload)
}

/// Polls a future that never waits on I/O (an in-memory body) to its end: the fuzz targets' and
/// tests' executor. Panics when it stalls (a million polls without an answer).
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000_000 {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the future stalled: still pending after a million polls of an in-memory body")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{CONTENT_TYPE, HeaderValue};

    const LIMITS: UploadLimits =
        UploadLimits { max_images: 2, max_image_bytes: 8, max_request_bytes: 1024, max_meta_bytes: 16 };

    fn form(body: &'static str, limits: &UploadLimits) -> Result<Upload, UploadError> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=XX"));
        let body = body.replace('\n', "\r\n");
        let chunks: Vec<Result<Bytes, PayloadError>> =
            body.into_bytes().chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        ready(read(&h, futures_util::stream::iter(chunks), limits))
    }

    #[test]
    fn reads_meta_and_files_and_enforces_sizes() {
        let ok = "--XX\nContent-Disposition: form-data; name=\"meta\"\n\n{\"a\":1}\n--XX\nContent-Disposition: form-data; name=\"f\"; filename=\"x.jpg\"\n\nabc\n--XX--\n";
        let u = form(ok, &LIMITS).unwrap();
        assert_eq!(u.meta.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(u.images(&["f"], &LIMITS).unwrap()[0].1.as_ref(), b"abc");
        assert_eq!(u.images(&["g"], &LIMITS).unwrap_err(), UploadError::NoSuchFile("g".into()));
        assert_eq!(u.images(&["f", "f"], &LIMITS).unwrap_err(), UploadError::DuplicateName("f".into()));
        let big = "--XX\nContent-Disposition: form-data; name=\"f\"; filename=\"x.jpg\"\n\n123456789\n--XX--\n";
        assert_eq!(form(big, &LIMITS).unwrap_err(), UploadError::ImageTooLarge("f".into(), 8));
        assert!(matches!(form("--YY\nnonsense", &LIMITS), Err(UploadError::Invalid(_))));
    }

    /// A body that ends inside a part just after a CR LF: actix-multipart waits for more forever;
    /// refused instead (the shape of the fuzzer's find, fuzz/regressions/multipart/).
    #[test]
    fn a_body_ending_inside_a_part_is_refused_not_awaited() {
        let cut = "--XX\nContent-Disposition: form-data; name=\"f\"; filename=\"x.jpg\"\n\nabc\n";
        assert_eq!(form(cut, &LIMITS).unwrap_err(), UploadError::Invalid("the body ended inside a form field".into()));
    }
}
