//! Starts the whole local environment (PostgreSQL, Kafka, kube-apiserver with etcd), prints how
//! to reach each component, and keeps it running until Ctrl-C. With `DEMO_EXIT=1` it exits as
//! soon as everything is up (a non-interactive check). Everything stops on exit.

use std::thread;

fn main() {
    // Block the stop signals before any thread starts so that only `sigwait` below sees them.
    let signals = stop_signals();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    println!(
        "==> starting PostgreSQL, Kafka and the Kubernetes API server (first run builds them)"
    );
    let pg = thread::spawn(audit_testenv::postgres);
    let kafka = thread::spawn(audit_testenv::kafka);
    let kube = thread::spawn(audit_testenv::kube);
    let (Ok(pg), Ok(kafka), Ok(kube)) = (pg.join(), kafka.join(), kube.join()) else {
        eprintln!("demo: a component failed to start (its reason is printed above)");
        std::process::exit(1);
    };

    println!();
    println!("PostgreSQL   {}", pg.version());
    println!("             psql '{}'", pg.superuser_url("postgres"));
    println!(
        "Kafka        {} (KRaft) bootstrap.servers={}",
        kafka.version(),
        kafka.bootstrap()
    );
    println!(
        "Kubernetes   {} at {}, {}",
        kube.version(),
        kube.server_url(),
        kube.etcd_version()
    );
    println!(
        "             {}/kubectl --kubeconfig={} get namespaces",
        kube.bin_dir().display(),
        kube.kubeconfig().display()
    );
    println!();

    if std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1") {
        println!("==> DEMO_EXIT=1: everything is up; stopping");
        return;
    }
    println!("==> running; press Ctrl-C to stop everything");
    let mut received = 0;
    unsafe { libc::sigwait(&signals, &mut received) };
    println!("\n==> stopping");
}

fn stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
