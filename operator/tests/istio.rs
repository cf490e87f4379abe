//! Istio: without its CRD a condition says so and everything else proceeds; with it the
//! VirtualService routes the path prefix to the Service, and goes away when disabled.
//! (Its own test binary: installing the VirtualService CRD changes the API server.)

mod common;

use common::{Fixture, condition};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
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

    let crds: Api<CustomResourceDefinition> = Api::all(f.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "virtualservices.networking.istio.io"},
        "spec": {
            "group": "networking.istio.io", "scope": "Namespaced",
            "names": {"kind": "VirtualService", "plural": "virtualservices", "singular": "virtualservice"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .expect("crd");
    crds.patch(
        "virtualservices.networking.istio.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the VirtualService CRD");
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        await_condition(
            crds,
            "virtualservices.networking.istio.io",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("established in time")
    .expect("watch");

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
        vs.data["spec"]["http"][0]["match"][0]["uri"]["prefix"],
        json!("/v1/auditmanager/")
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
