//! Istio: without its CRDs a condition says so and everything else proceeds; with them the
//! VirtualService routes the event paths to the Service, and goes away when disabled.
//! (Its own test binary: installing Istio's CRDs changes the API server.)

mod common;

use common::{Fixture, condition};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_virtual_service_follows_istio_and_its_crd() {
    let f = Fixture::new(
        true,
        json!({"istio": {"enabled": true, "hostname": "audit.example.org"}}),
    )
    .await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "IstioReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "IstioNotInstalled"),
        "{message}"
    );
    assert_eq!(
        condition(&am, "DatabaseReady").0,
        "True",
        "everything else proceeds"
    );

    // Istio's own CRDs, with their published schemas.
    audit_testenv::kube()
        .install_istio_crds()
        .expect("install Istio's CRDs");

    let am = f.reconcile().await;
    assert_eq!(
        condition(&am, "IstioReady").0,
        "",
        "no Istio problem once installed"
    );
    assert_eq!(
        am.status
            .as_ref()
            .and_then(|s| s.endpoint.clone())
            .as_deref(),
        Some("https://audit.example.org/v1/auditmanager/events")
    );
    let resource = ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    };
    let services: Api<DynamicObject> =
        Api::namespaced_with(f.client.clone(), &f.namespace, &resource);
    let vs = services
        .get(&f.app())
        .await
        .expect("the VirtualService exists");
    assert_eq!(vs.data["spec"]["hosts"], json!(["audit.example.org"]));
    assert_eq!(
        vs.data["spec"]["http"][1]["match"][0]["uri"]["exact"],
        json!("/v1/auditmanager/events")
    );
    let uid = am.metadata.uid.clone().expect("uid");
    assert!(common::owned_by(vs.metadata.owner_references.clone(), &uid));

    f.api::<audit_manager_crds::AuditManager>()
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"istio": {"enabled": false}}})),
        )
        .await
        .expect("disable istio");
    f.reconcile().await;
    assert!(
        services.get_opt(&f.app()).await.expect("get").is_none(),
        "the VirtualService is removed"
    );
}
