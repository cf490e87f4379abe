//! The `audit-manager` binary.

fn main() {
    println!("audit-manager {}", env!("CARGO_PKG_VERSION"));
}
