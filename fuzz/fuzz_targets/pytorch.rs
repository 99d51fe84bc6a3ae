//! A PyTorch checkpoint (zip, legacy tar or pickle) through burn-store's reader
//! (`pytorch-reader`, the version the server loads `.pt`/`.pth` weights with): every tensor read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader takes a path (tensor data lives outside the pickle): one file per process.
    thread_local! {
        static PATH: std::path::PathBuf =
            std::env::temp_dir().join(format!("gpubackend-fuzz-pytorch-{}.pt", std::process::id()));
    }
    PATH.with(|path| {
        std::fs::write(path, data).unwrap();
        if let Ok(reader) = pytorch_reader::PytorchReader::new(path) {
            for t in reader.tensors().values() {
                if t.num_elements() < 1 << 24 {
                    let _ = t.read();
                }
            }
        }
    });
});
