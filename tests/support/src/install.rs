//! The project installed on a cluster with a real node as users install it: both images built
//! here and imported into the node's containerd, then `kubectl apply -k` of `manifests/` through
//! a kustomize overlay that points the operator's Deployment at the local image.

use std::path::{Path, PathBuf};

use crate::build::workspace_binary;
use crate::images::{Image, Images};
use crate::node::Cluster;
use crate::process;
use crate::setup::{Error, scratch_dir, write_file};

const COMPONENT: &str = "the operator's installation";
/// The namespace `manifests/` installs the operator into.
pub const SYSTEM_NAMESPACE: &str = "audit-manager-system";
/// The image `manifests/operator.yaml` names, which the overlay replaces.
const PUBLISHED_OPERATOR_IMAGE: &str = "ghcr.io/openg2p/audit-manager-operator";

/// A locally built image: its repository and tag (`localhost/<name>`, a content digest).
#[derive(Clone, Debug)]
pub struct LocalImage {
    pub repository: String,
    pub tag: String,
}

/// The operator, installed and rolled out.
pub struct Installed {
    /// The kustomize overlay (`kubectl delete -k` it to uninstall).
    pub overlay: PathBuf,
    /// The runtime image, for `spec.image` of AuditManagers.
    pub runtime: LocalImage,
    pub operator: LocalImage,
}

/// Builds (or finds, by content) the image of `image` around the workspace's binary and
/// imports it into the node's containerd.
pub fn image(cluster: &Cluster, images: &Images, image: Image) -> Result<LocalImage, Error> {
    let built = images.build(image, &workspace_binary(image.name()))?;
    cluster.import(&images.archive(&built.reference)?)?;
    let (repository, tag) = built
        .reference
        .rsplit_once(':')
        .ok_or_else(|| Error::Start {
            component: COMPONENT.into(),
            reason: format!("the image reference {} has no tag", built.reference),
            log: String::new(),
        })?;
    Ok(LocalImage {
        repository: repository.to_string(),
        tag: tag.to_string(),
    })
}

/// Both images imported, then `kubectl apply -k` of an overlay of `manifests/`; returns once
/// the operator's Deployment has rolled out (every replica Ready).
pub fn operator(cluster: &Cluster) -> Result<Installed, Error> {
    let images = Images::open()?;
    let runtime = image(cluster, &images, Image::Runtime)?;
    let operator = image(cluster, &images, Image::Operator)?;
    let overlay = scratch_dir("install")?;
    write_file(
        &overlay.join("kustomization.yaml"),
        &overlay_of(&manifests_dir(), &overlay, &operator),
    )?;
    kubectl(cluster, &["apply", "-k", &overlay.display().to_string()])?;
    kubectl(
        cluster,
        &[
            "rollout",
            "status",
            "deployment/audit-manager-operator",
            "-n",
            SYSTEM_NAMESPACE,
            "--timeout=180s",
        ],
    )?;
    Ok(Installed {
        overlay,
        runtime,
        operator,
    })
}

/// `manifests/` of this checkout.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

/// A kustomization in `overlay` of `manifests` with the operator image replaced. Kustomize
/// takes relative paths only: up from the overlay to `/`, then down.
fn overlay_of(manifests: &Path, overlay: &Path, operator: &LocalImage) -> String {
    let manifests = manifests.canonicalize().unwrap_or(manifests.to_path_buf());
    let up = "../".repeat(overlay.components().count().saturating_sub(1));
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {up}{manifests}
images:
  - name: {PUBLISHED_OPERATOR_IMAGE}
    newName: {repository}
    newTag: \"{tag}\"
",
        manifests = manifests.display().to_string().trim_start_matches('/'),
        repository = operator.repository,
        tag = operator.tag,
    )
}

/// Runs kubectl against the cluster; its standard output.
pub fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String, Error> {
    let mut command = cluster.kube.kubectl();
    command.args(args);
    process::run("kubectl", command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_reaches_manifests_by_a_relative_path() {
        let image = LocalImage {
            repository: "localhost/audit-manager-operator".into(),
            tag: "0123456789abcdef".into(),
        };
        let text = overlay_of(
            Path::new("/work/x/manifests"),
            Path::new("/tmp/run/install"),
            &image,
        );
        assert!(text.contains("  - ../../../work/x/manifests\n"), "{text}");
        assert!(text.contains("newTag: \"0123456789abcdef\""), "{text}");
    }
}
