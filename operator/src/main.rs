//! audit-manager-operator: reconciles `AuditManager` resources (provisioning lands with its
//! own issue; this binary only reports its version for now).

fn main() {
    println!("audit-manager-operator {}", env!("CARGO_PKG_VERSION"));
}
