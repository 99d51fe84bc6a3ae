//! `protogen <proto dir> <out dir>`: proto/inference.proto → <out dir>/inference.rs (prost
//! messages and the tonic server, no client).

fn main() {
    let mut args = std::env::args().skip(1);
    let (protos, out) = (args.next().expect("proto dir"), args.next().expect("out dir"));
    let fds = protox::compile([format!("{protos}/inference.proto")], [protos.as_str()]).expect("compile proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(false)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("generate");
}
