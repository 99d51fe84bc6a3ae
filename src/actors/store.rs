//! The person store on its own thread (SQLite and PostgreSQL calls block): a one-thread
//! SyncArbiter actor.

use actix::{Actor, Handler, Message, SyncContext};

use crate::store::{PersonStore, Recognition, StoreError};

pub struct StoreActor {
    store: Option<PersonStore>,
}

impl StoreActor {
    /// `None` only if the arbiter re-created the actor after a panic: every request then fails
    /// with a clear error instead of touching a store in an unknown state.
    pub fn new(store: Option<PersonStore>) -> Self {
        Self { store }
    }

    fn store(&mut self) -> Result<&mut PersonStore, StoreError> {
        self.store.as_mut().ok_or(StoreError::Unavailable)
    }
}

impl Actor for StoreActor {
    type Context = SyncContext<Self>;
}

/// persons/set: these faces join these persons, in one transaction.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct SetFaces {
    pub space: u32,
    pub faces: Vec<(i64, Vec<f32>)>,
}

impl Handler<SetFaces> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: SetFaces, _: &mut SyncContext<Self>) -> Self::Result {
        let refs: Vec<(i64, &[f32])> = msg.faces.iter().map(|(id, e)| (*id, e.as_slice())).collect();
        self.store()?.add_faces(msg.space, &refs)
    }
}

/// persons/recognize for one image's faces.
#[derive(Message)]
#[rtype(result = "Result<Vec<Recognition>, StoreError>")]
pub struct Recognize {
    pub space: u32,
    pub faces: Vec<Vec<f32>>,
    pub threshold: f32,
    pub create_new: bool,
    pub update: bool,
}

impl Handler<Recognize> for StoreActor {
    type Result = Result<Vec<Recognition>, StoreError>;

    fn handle(&mut self, msg: Recognize, _: &mut SyncContext<Self>) -> Self::Result {
        self.store()?.recognize(msg.space, &msg.faces, msg.threshold, msg.create_new, msg.update)
    }
}

/// persons/delete: removes these persons; true for each that existed.
#[derive(Message)]
#[rtype(result = "Result<Vec<bool>, StoreError>")]
pub struct DeletePersons {
    pub space: u32,
    pub ids: Vec<i64>,
}

impl Handler<DeletePersons> for StoreActor {
    type Result = Result<Vec<bool>, StoreError>;

    fn handle(&mut self, msg: DeletePersons, _: &mut SyncContext<Self>) -> Self::Result {
        self.store()?.delete_many(msg.space, &msg.ids)
    }
}

/// persons/truncate: empties a space.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct Truncate {
    pub space: u32,
}

impl Handler<Truncate> for StoreActor {
    type Result = Result<usize, StoreError>;

    fn handle(&mut self, msg: Truncate, _: &mut SyncContext<Self>) -> Self::Result {
        self.store()?.truncate(msg.space)
    }
}
