//! Writes the AuditManager CRD to each path given (or prints it): `manifests/crd.yaml` and the
//! Helm chart's copy.

fn main() -> std::process::ExitCode {
    let yaml = match audit_manager_crds::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: serializing the CRD: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: writing {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {path}");
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

    fn read(path: &str) -> String {
        std::fs::read_to_string(format!("{ROOT}/{path}")).expect(path)
    }

    #[test]
    fn the_committed_crds_are_the_generated_one() {
        let generated = audit_manager_crds::crd_yaml().expect("CRD serializes");
        for path in [
            "manifests/crd.yaml",
            "charts/audit-manager-operator/files/crd.yaml",
        ] {
            assert!(
                read(path) == generated,
                "{path} is stale: run `make manifests` and commit the result"
            );
        }
    }

    #[test]
    fn the_chart_carries_manifests_copies_and_the_crate_version() {
        for file in [
            "deletion-protection.yaml",
            "monitoring/prometheusrule.yaml",
            "monitoring/podmonitor-operator.yaml",
            "monitoring/audit-manager-dashboard.json",
        ] {
            assert!(
                read(&format!("charts/audit-manager-operator/files/{file}"))
                    == read(&format!("manifests/{file}")),
                "the chart's copy of manifests/{file} is stale: run `make manifests`"
            );
        }
        let chart = read("charts/audit-manager-operator/Chart.yaml");
        let version = env!("CARGO_PKG_VERSION");
        for line in [
            format!("version: {version}"),
            format!("appVersion: \"{version}\""),
        ] {
            assert!(
                chart.lines().any(|l| l == line),
                "Chart.yaml must say `{line}`: the chart follows the crate version"
            );
        }
    }
}
