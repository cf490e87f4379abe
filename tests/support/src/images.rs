//! The project's container images, built the way users build them: the last stage of
//! `runtime/Dockerfile` and `operator/Dockerfile`, with podman, on the Debian base that
//! `tests/env/provision.sh images` makes with debootstrap (no registry is reachable here).
//!
//! The Rust build happens outside the image (`--build-arg BINARIES=prebuilt`): the stage that
//! copies the binary takes the workspace's own build, with its debug information stripped,
//! so `make test` compiles the workspace once. Images are tagged by the digest of everything
//! that goes into them (Dockerfile, binary, files copied, base image), so an unchanged image
//! is never built twice; the store lives in the cache (`$AUDIT_MANAGER_CACHE/containers`).
//!
//! Builds use the host's network namespace (`--network host`): the final stage's `apt-get`
//! reaches Debian's package servers, and no bridge, netns or firewall rule is created. Cgroups
//! of containers run here are kept under one parent, removed afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::setup::{Error, announce, cache_dir, create_dirs, require_file, write_file};

/// The base every final stage starts `FROM`, as the Dockerfiles name it.
pub const BASE: &str = "docker.io/library/debian:bookworm-slim";
/// The cgroup parent of containers run by [`Images::run`]; removed after each run.
const CGROUP_PARENT: &str = "audit-testenv-podman";

/// One of the project's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Runtime,
    Operator,
}

impl Image {
    /// The repository name of the image (and of the binary in it).
    pub fn name(self) -> &'static str {
        match self {
            Image::Runtime => "audit-manager",
            Image::Operator => "audit-manager-operator",
        }
    }

    fn dockerfile(self) -> &'static str {
        match self {
            Image::Runtime => "runtime/Dockerfile",
            Image::Operator => "operator/Dockerfile",
        }
    }

    /// Files of the repository its Dockerfile copies besides the binary.
    fn files(self) -> &'static [&'static str] {
        match self {
            Image::Runtime => &["config/default.yaml"],
            Image::Operator => &[],
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Built {
    /// `localhost/<name>:<content digest>`.
    pub reference: String,
    /// False when an image of the same content was already there.
    pub rebuilt: bool,
}

/// podman with the test environment's own image store.
pub struct Images {
    root: PathBuf,
    runroot: PathBuf,
}

/// One build or run at a time per test process (podman's store locks, and output).
static BUSY: Mutex<()> = Mutex::new(());

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Images {
    /// The store, with the base image in it (imported from the provisioned root file system
    /// when missing).
    pub fn open() -> Result<Images, Error> {
        let dir = cache_dir().join("containers");
        let images = Images {
            root: dir.join("storage"),
            runroot: dir.join("run"),
        };
        require_file("podman", PathBuf::from("/usr/bin/podman"))?;
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if !images.exists(BASE) {
            let rootfs = require_file(
                "the image base (debootstrap)",
                cache_dir().join("debian-bookworm-slim/rootfs.tar"),
            )?;
            announce(&format!("importing {} as {BASE}", rootfs.display()));
            images.podman(&[
                "import",
                "--change",
                "CMD [\"bash\"]",
                &rootfs.display().to_string(),
                BASE,
            ])?;
        }
        Ok(images)
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args([
                "--storage-driver",
                "overlay",
                // crun refuses this machine's hybrid cgroups; runc takes them.
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// Runs podman with `args` to completion: its stdout, or an error with its output.
    fn podman(&self, args: &[&str]) -> Result<String, Error> {
        let mut c = self.command();
        c.args(args);
        crate::process::run("podman", c)
    }

    /// Whether the store holds `reference`.
    pub fn exists(&self, reference: &str) -> bool {
        self.command()
            .args(["image", "exists", reference])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Builds `image` from its Dockerfile with `binary` as the prebuilt binary, unless an
    /// image of the same content is in the store.
    pub fn build(&self, image: Image, binary: &Path) -> Result<Built, Error> {
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        let context = crate::scratch(&format!("image-{}", image.name()))?;
        let repo = repository();
        copy(&repo.join(image.dockerfile()), &context.join("Dockerfile"))?;
        let mut inputs = vec![context.join("Dockerfile"), binary.to_path_buf()];
        for file in image.files() {
            copy(&repo.join(file), &context.join(file))?;
            inputs.push(context.join(file));
        }
        let digest = digest(&inputs, &self.inspect(BASE, "{{.Id}}")?)?;
        let reference = format!("localhost/{}:{}", image.name(), &digest[..16]);
        if self.exists(&reference) {
            return Ok(Built {
                reference,
                rebuilt: false,
            });
        }
        // The workspace's build carries debug information the image has no use for.
        let staged = context.join("target/release").join(image.name());
        create_dirs(&[&context.join("target/release")])?;
        let mut strip = Command::new("strip");
        strip
            .arg("--strip-debug")
            .arg("-o")
            .arg(&staged)
            .arg(binary);
        crate::process::run("strip (binutils)", strip)?;
        announce(&format!("building {reference} from {}", image.dockerfile()));
        let started = std::time::Instant::now();
        let context_arg = context.display().to_string();
        self.podman(&[
            "build",
            "--pull=never",
            "--network",
            "host",
            // No CAP_SYS_RESOURCE here: podman's default limits cannot be set.
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--build-arg",
            "BINARIES=prebuilt",
            // (podman 4.3 with --layers=false fails after tagging when a stage is only an
            // alias of another, as `binaries` is.)
            "-t",
            &reference,
            &context_arg,
        ])?;
        announce(&format!(
            "built {reference} in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(Built {
            reference,
            rebuilt: true,
        })
    }

    /// The pause image every pod sandbox starts from, as an OCI archive for containerd: built
    /// (once per store) from `pause.c` of the Kubernetes module in the Go module cache, as
    /// Kubernetes builds its own, since no registry is reachable.
    pub fn pause(&self) -> Result<PathBuf, Error> {
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if !self.exists(crate::node::PAUSE_IMAGE) {
            let modules = crate::process::run("go env GOMODCACHE", {
                let mut c = Command::new("go");
                c.args(["env", "GOMODCACHE"]);
                c
            })?;
            let source = require_file(
                "pause.c (provisioned with the Kubernetes build)",
                Path::new(modules.trim())
                    .join(format!(
                        "k8s.io/kubernetes@{}",
                        crate::setup::pinned("KUBERNETES_VERSION")
                    ))
                    .join("build/pause/linux/pause.c"),
            )?;
            let context = crate::scratch("image-pause")?;
            let mut gcc = Command::new("gcc");
            gcc.args([
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                "-DVERSION=v3.10-testenv",
                "-o",
            ])
            .arg(context.join("pause"))
            .arg(&source);
            crate::process::run("gcc (pause.c)", gcc)?;
            write_file(
                &context.join("Containerfile"),
                "FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT [\"/pause\"]\n",
            )?;
            let context_arg = context.display().to_string();
            self.podman(&[
                "build",
                "--pull=never",
                "--network",
                "none",
                "-t",
                crate::node::PAUSE_IMAGE,
                &context_arg,
            ])?;
        }
        self.archive_locked(crate::node::PAUSE_IMAGE)
    }

    /// `reference` as an OCI archive (`podman save --format oci-archive`), for `ctr images
    /// import`; kept in the cache beside the store, since references are content-addressed.
    pub fn archive(&self, reference: &str) -> Result<PathBuf, Error> {
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        self.archive_locked(reference)
    }

    fn archive_locked(&self, reference: &str) -> Result<PathBuf, Error> {
        let dir = self.root.with_file_name("archives");
        create_dirs(&[&dir])?;
        let file = dir.join(format!("{}.tar", reference.replace(['/', ':'], "_")));
        if file.exists() {
            return Ok(file);
        }
        let partial = file.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        self.podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            &partial.display().to_string(),
            reference,
        ])?;
        std::fs::rename(&partial, &file)
            .map_err(|e| Error::io(format!("keeping {}", file.display()), e))?;
        Ok(file)
    }

    /// `podman image inspect --format <format>` of `reference`.
    pub fn inspect(&self, reference: &str, format: &str) -> Result<String, Error> {
        Ok(self
            .podman(&["image", "inspect", "--format", format, reference])?
            .trim()
            .to_string())
    }

    /// Runs `reference` once, as a restricted pod would: the image's own user, a read-only
    /// root file system, every capability dropped, no new privileges, no network. `entrypoint`
    /// overrides the image's when given. Returns the process's output whatever its status.
    pub fn run(
        &self,
        reference: &str,
        entrypoint: Option<&str>,
        args: &[&str],
    ) -> Result<Output, Error> {
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = self.command();
        c.args([
            "run",
            "--rm",
            "--pull=never",
            "--network",
            "none",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt",
            "no-new-privileges",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        c.arg(format!("--cgroup-parent=/{CGROUP_PARENT}"));
        if let Some(e) = entrypoint {
            c.args(["--entrypoint", e]);
        }
        c.arg(reference).args(args);
        let out = c
            .output()
            .map_err(|e| Error::io(format!("running {reference}"), e));
        crate::undo::remove_cgroup(CGROUP_PARENT);
        out
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(dir) = to.parent() {
        create_dirs(&[dir])?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::io(format!("copying {} to {}", from.display(), to.display()), e))
}

/// The SHA-256 of the inputs' contents, in order, and of `base`, in hex.
fn digest(inputs: &[PathBuf], base: &str) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for input in inputs {
        let mut file = std::fs::File::open(input)
            .map_err(|e| Error::io(format!("reading {}", input.display()), e))?;
        std::io::copy(&mut file, &mut hasher)
            .map_err(|e| Error::io(format!("reading {}", input.display()), e))?;
        hasher.update(b"\0");
    }
    hasher.update(base.trim().as_bytes());
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
