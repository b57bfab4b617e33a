//! Packaging: the container's build stage installs what the build needs, as `scripts/setup.sh`
//! does on a machine (cmake for Pingora's zlib-ng, protoc for the etcd client's gRPC code).

#[test]
fn the_docker_build_stage_installs_what_the_build_needs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    // The text from the first `FROM` to the second: the build stage.
    let build_stage = dockerfile.split("\nFROM ").nth(1).expect("a build stage");
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    for package in ["cmake", "protobuf-compiler"] {
        assert!(
            setup.contains(package),
            "setup.sh no longer installs {package}"
        );
        assert!(
            build_stage.contains(package),
            "docker/Dockerfile's build stage lacks {package}"
        );
    }
}
