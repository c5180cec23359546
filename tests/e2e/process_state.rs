//! What a process that does not answer is doing, for a failure message: shared by the end-to-end
//! harness and the peer benchmark (`#[path]`), both of which start Node's IdP, which has been seen
//! in CI to hang before its first line ran.

use std::process::Command;

/// The kernel's view of a process that does not answer (each thread's state, where it waits and
/// in which system call, and the main thread's kernel stack), and the machine's load.
pub fn describe(pid: u32) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    if read(&format!("/proc/{pid}/status")).is_empty() {
        return format!("pid {pid}: process gone");
    }
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path();
            let at = |f: &str| read(&dir.join(f).to_string_lossy());
            let status = at("status");
            // The first number of `syscall` is the call it is blocked in (-1: none, running).
            let syscall = at("syscall");
            threads.push(format!(
                "  {} {:?} {} in {:?}, syscall {}",
                task.file_name().to_string_lossy(),
                field(&status, "Name:"),
                field(&status, "State:"),
                at("wchan"),
                syscall.split_whitespace().next().unwrap_or("?"),
            ));
        }
    }
    threads.sort();
    let busiest = Command::new("ps")
        .args(["-eo", "pid,stat,pcpu,etime,comm", "--sort=-pcpu"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    format!(
        "pid {pid}, {} threads:\n{}\nmain thread's kernel stack:\n{}load average {}; busiest processes:\n{busiest}",
        threads.len(),
        threads.join("\n"),
        read(&format!("/proc/{pid}/stack")),
        read("/proc/loadavg").trim()
    )
}
