//! CPU pools for decoding and preprocessing, off the HTTP threads.

use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use actix_web::web::Bytes;

use crate::config::Limits;
use crate::pipelines::decode::{DecodeError, DecodedImage, decode};
use crate::pipelines::preprocess::{ClassifierSpec, ModelInput, classifier_input};

pub struct Decoder;

impl Actor for Decoder {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<DecodedImage, DecodeError>")]
pub struct Decode {
    pub bytes: Bytes,
    pub limits: Arc<Limits>,
}

impl Handler<Decode> for Decoder {
    type Result = Result<DecodedImage, DecodeError>;

    fn handle(&mut self, msg: Decode, _: &mut SyncContext<Self>) -> Self::Result {
        decode(&msg.bytes, &msg.limits)
    }
}

pub struct Preprocessor;

impl Actor for Preprocessor {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "ModelInput")]
pub struct Preprocess {
    pub image: Arc<DecodedImage>,
    pub spec: ClassifierSpec,
}

impl Handler<Preprocess> for Preprocessor {
    type Result = actix::MessageResult<Preprocess>;

    fn handle(&mut self, msg: Preprocess, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(classifier_input(&msg.image, msg.spec))
    }
}
