//! The project's images, built from `runtime/Dockerfile` and `operator/Dockerfile` (their last
//! stage, as users build them) on the debootstrap base, then run as a restricted pod runs
//! them: what is inside (user, CA certificates, libraries, default configuration) and that a
//! second build of the same content is not a build.

use audit_testenv::images::{Image, Images};
use audit_testenv::workspace_binary;

fn shell(images: &Images, reference: &str, script: &str) -> String {
    let out = images
        .run(reference, Some("/bin/sh"), &["-c", script])
        .expect("podman run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    assert!(
        out.status.success(),
        "{reference}: `{script}` failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn the_images_build_from_their_dockerfiles_and_run_non_root_on_a_read_only_root() {
    let images = Images::open().expect("the image store");
    for image in [Image::Runtime, Image::Operator] {
        let binary = workspace_binary(image.name());
        let built = images.build(image, &binary).expect("building the image");
        let reference = &built.reference;

        // Non-root by numbers, user and group both: a pod's runAsNonRoot can verify it, and no
        // process runs with group 0.
        assert_eq!(
            images
                .inspect(reference, "{{.Config.User}}")
                .expect("inspect"),
            "65532:65532",
            "{reference}"
        );
        assert_eq!(shell(&images, reference, "id -u; id -g"), "65532\n65532");

        // The binary's libraries are all in the image: it runs, with every capability dropped,
        // no new privileges, no network and a read-only root.
        let out = images
            .run(reference, None, &["--version"])
            .expect("podman run --version");
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && version.starts_with(image.name()),
            "{reference} --version: {} {version} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // CA certificates for TLS to PostgreSQL, Kafka and JWKS endpoints.
        shell(
            &images,
            reference,
            "test -s /etc/ssl/certs/ca-certificates.crt",
        );
        // Nothing can be written to the root file system.
        assert_eq!(
            shell(
                &images,
                reference,
                "touch /usr/x 2>/dev/null && echo writable || echo read-only"
            ),
            "read-only"
        );
        if image == Image::Runtime {
            shell(
                &images,
                reference,
                "test -s /etc/audit-manager/default.yaml",
            );
        }

        // Cached by content: the same inputs give the same image, without a build.
        let again = images.build(image, &binary).expect("building again");
        assert_eq!(again.reference, built.reference);
        assert!(
            !again.rebuilt,
            "{reference} was built twice from the same content"
        );
        let size: f64 = images
            .inspect(reference, "{{.Size}}")
            .expect("inspect size")
            .parse()
            .unwrap_or(0.0);
        eprintln!("{reference}: {:.0} MB", size / 1e6);
    }
    // Running containers left no cgroup behind.
    for hierarchy in ["memory", "pids", "cpu", "unified"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("audit-testenv-podman");
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}
