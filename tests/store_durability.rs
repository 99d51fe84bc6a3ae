//! The person store survives a restart and `kill -9` in the middle of writing: a child process
//! (this test binary, re-run as a writer) adds faces as fast as it can and prints each id once
//! `add_face` has returned; the parent kills it with SIGKILL mid-stream, then reopens the file:
//! SQLite's integrity check passes and every acknowledged write is there.

use std::path::PathBuf;

use crate::common;
use gpubackend::store::PersonStore;

const DIM: usize = 128;
const WRITER_ENV: &str = "GPUBACKEND_STORE_WRITER_DIR";

fn embedding(i: i64) -> Vec<f32> {
    (0..DIM).map(|k| ((i as f32 + 1.0) * (k as f32 + 1.0)).sin()).collect()
}

/// Run only as the child of `kill_9_mid_write_loses_nothing_acknowledged`.
#[test]
#[ignore = "the writer half of the kill -9 test; runs as its child process"]
fn writer() {
    let Ok(dir) = std::env::var(WRITER_ENV) else { return };
    let mut store = PersonStore::open(&PathBuf::from(dir), DIM).unwrap();
    for i in 1.. {
        store.add_face(3, i, &embedding(i)).unwrap();
        println!("ack {i}");
    }
}

#[test]
fn kill_9_mid_write_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("gpubackend-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut child, acked) =
        common::writer_after_acks("store_durability::writer", (WRITER_ENV, dir.to_str().unwrap()), 200);
    // SIGKILL: no destructor, no checkpoint, possibly inside a transaction.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut store = PersonStore::open(&dir, DIM).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let stored = store.stored_len(3).unwrap();
    assert!(stored as i64 >= acked, "{acked} writes acknowledged, {stored} on disk");
    for i in 1..=acked {
        let m = store.best_match(3, &embedding(i)).unwrap().unwrap();
        assert!(m.similarity > 0.9999, "face {i}: {m:?}");
    }
    // And the store takes writes again after the crash.
    drop(store);
    let mut store = PersonStore::open(&dir, DIM).unwrap();
    store.add_face(3, 1_000_000, &embedding(5)).unwrap();
    assert_eq!(store.stored_len(3).unwrap(), stored + 1);
}
