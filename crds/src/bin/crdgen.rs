//! Writes the AuditManager CRD to the path given (or prints it).

fn main() -> std::process::ExitCode {
    let yaml = match audit_manager_crds::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: serializing the CRD: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1) {
        None => print!("{yaml}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: writing {path}: {e}");
                return std::process::ExitCode::FAILURE;
            }
            eprintln!("crdgen: wrote {path}");
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crd.yaml");
        let committed = std::fs::read_to_string(path).expect("manifests/crd.yaml exists");
        let generated = audit_manager_crds::crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "manifests/crd.yaml is stale: run `make manifests` and commit the result"
        );
    }
}
