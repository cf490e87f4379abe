//! What a real node changes outside its scratch folder, written down before each change so
//! that it can be put back: when the node stops, at the test binary's exit, and, for a run that
//! was killed, by the next test binary (the record lives in the dead run's scratch folder,
//! which the next one sweeps).
//!
//! kubelet, containerd, runc and the CNI plugins write outside the roots they are given: bind
//! mounts, `/run/containerd`, `/run/netns/cni-*`, `/var/lib/kubelet/device-plugins`, cgroups
//! under `kubepods`, kernel settings; and containerd's shims outlive containerd.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The record of one node's changes; every field is undone by [`Undo::apply`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Undo {
    /// Kernel settings (`vm.overcommit_memory`, ...) and their values before the node started.
    pub sysctls: Vec<(String, String)>,
    /// Folders that did not exist before (removed whole, after what is mounted below them).
    pub created: Vec<PathBuf>,
    /// Everything mounted at or below these is unmounted.
    pub mounts_below: Vec<PathBuf>,
    /// Entries of `/run/netns` that existed before (any other `cni-*` entry is the node's).
    pub netns_before: Vec<String>,
    /// Cgroups (by name, in every hierarchy) whose processes are killed and which are removed.
    pub cgroups: Vec<String>,
    /// Processes whose command line holds this text (containerd's shims) are killed.
    pub processes_with: Vec<String>,
    /// A command that removes firewall rules the node added (`kube-proxy --cleanup`).
    pub firewall_cleanup: Vec<String>,
    /// `<iptables command> <table> <chain>` of every chain that existed before; the node's
    /// other `KUBE-*` chains (kubelet's `KUBE-FIREWALL`, which `kube-proxy --cleanup` leaves)
    /// are unhooked, flushed and deleted.
    pub firewall_chains_before: Vec<String>,
    /// A network bridge the node created.
    pub bridge: Option<String>,
}

const NETNS: &str = "/run/netns";

/// Records registered in this process, undone at exit (after its servers are stopped).
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl Undo {
    /// Writes the record to `path` (before the change it describes is made).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(partial, path)?;
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.iter().any(|p| p == path) {
            pending.push(path.to_path_buf());
        }
        Ok(())
    }

    /// Undoes the record at `path` (if any) and removes it.
    pub fn apply_file(path: &Path) {
        let Ok(text) = std::fs::read(path) else {
            return;
        };
        if let Ok(undo) = serde_json::from_slice::<Undo>(&text) {
            undo.apply();
        }
        let _ = std::fs::remove_file(path);
        PENDING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != path);
    }

    /// Puts the machine back as the record says, each step independent of the others.
    pub fn apply(&self) {
        // Processes first: a live container holds its mounts, netns and cgroups.
        for _ in 0..50 {
            let mut killed = 0;
            for text in &self.processes_with {
                killed += kill_matching(text);
            }
            for cgroup in &self.cgroups {
                killed += kill_cgroup(cgroup);
            }
            if killed == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut below: Vec<PathBuf> = self.mounts_below.clone();
        let netns = self.new_netns();
        below.extend(netns.iter().cloned());
        unmount_below(&below);
        for n in &netns {
            let _ = std::fs::remove_file(n);
        }
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir_all(dir);
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        for (name, value) in &self.sysctls {
            let _ = std::fs::write(sysctl_path(name), value);
        }
        if let Some((program, args)) = self.firewall_cleanup.split_first() {
            let _ = std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        for chain in firewall_chains() {
            if chain
                .split(' ')
                .nth(2)
                .is_some_and(|c| c.starts_with("KUBE-"))
                && !self.firewall_chains_before.contains(&chain)
            {
                remove_chain(&chain);
            }
        }
        if let Some(bridge) = &self.bridge {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// `cni-*` entries of `/run/netns` that were not there before.
    fn new_netns(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(NETNS) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("cni-") && !self.netns_before.contains(n))
            .map(|n| Path::new(NETNS).join(n))
            .collect()
    }
}

/// Undoes every record of this process (at exit, after its servers are stopped).
pub(crate) fn apply_pending() {
    let pending: Vec<PathBuf> = PENDING
        .lock()
        .map(|p| p.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    for path in pending {
        Undo::apply_file(&path);
    }
}

/// The entries of `/run/netns` now.
pub(crate) fn netns_entries() -> Vec<String> {
    std::fs::read_dir(NETNS)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// A kernel setting's current value.
pub(crate) fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(name))
        .ok()
        .map(|v| v.trim().to_string())
}

const TABLES: &[&str] = &["filter", "nat", "mangle"];

/// `<command> <table> <chain>` of every user-defined chain of iptables and ip6tables.
pub(crate) fn firewall_chains() -> Vec<String> {
    let mut chains = Vec::new();
    for command in ["iptables", "ip6tables"] {
        for table in TABLES {
            for line in iptables_rules(command, table) {
                if let Some(chain) = line.strip_prefix("-N ") {
                    chains.push(format!("{command} {table} {chain}"));
                }
            }
        }
    }
    chains.sort();
    chains
}

fn iptables_rules(command: &str, table: &str) -> Vec<String> {
    std::process::Command::new(command)
        .args(["-w", "-t", table, "-S"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the rules that jump to a chain, then the chain.
fn remove_chain(chain: &str) {
    let mut parts = chain.split(' ');
    let (Some(command), Some(table), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let run = |args: Vec<String>| {
        let _ = std::process::Command::new(command)
            .args(["-w", "-t", table])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status();
    };
    for rule in iptables_rules(command, table) {
        if let Some(rest) = rule.strip_prefix("-A ")
            && rule.split(' ').any(|w| w == name)
            && !rest.starts_with(&format!("{name} "))
        {
            let mut args = vec!["-D".to_string()];
            args.extend(rest.split(' ').map(str::to_string));
            run(args);
        }
    }
    run(vec!["-F".into(), name.into()]);
    run(vec!["-X".into(), name.into()]);
}

/// SIGKILL to every process whose command line contains `text`; how many there were.
fn kill_matching(text: &str) -> usize {
    let me = std::process::id().to_string();
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text)
            && let Ok(pid) = pid.parse::<i32>()
            && unsafe { libc::kill(pid, libc::SIGKILL) } == 0
        {
            killed += 1;
        }
    }
    killed
}

/// The folders of cgroup `name` in every hierarchy (v1 controllers and the unified one).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(name)];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            dirs.push(h.path().join(name));
        }
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// SIGKILL to every process in cgroup `name` or below it; how many there were.
fn kill_cgroup(name: &str) -> usize {
    let mut killed = 0;
    for dir in cgroup_dirs(name) {
        for procs in walk(&dir) {
            let Ok(text) = std::fs::read_to_string(procs.join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
    }
    killed
}

/// Removes cgroup `name` and its children (deepest first) from every hierarchy; a cgroup
/// whose last process is still exiting refuses for a moment, so this retries briefly.
pub(crate) fn remove_cgroup(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = false;
        for dir in cgroup_dirs(name) {
            let mut all = walk(&dir);
            all.reverse();
            for d in all {
                if std::fs::remove_dir(&d).is_err() && d.exists() {
                    left = true;
                }
            }
        }
        if !left || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `dir` and every folder below it, parents before children.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The mount points of this mount namespace (from `/proc/self/mountinfo`).
pub(crate) fn mount_points() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(char::from(b));
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Unmounts (lazily, deepest first, each as often as it is stacked) everything mounted at or
/// below one of `prefixes`.
fn unmount_below(prefixes: &[PathBuf]) {
    for _ in 0..10 {
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| prefixes.iter().any(|p| m.starts_with(p)))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
