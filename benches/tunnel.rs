//! TCP tunnel throughput and CPU per MiB, four ways in one run on loopback: straight to a TCP
//! sink; through castellan's tunnel (`castellan tunnel --local-port` → `castellan serve` → sink,
//! as a service account) over plain HTTP and over HTTPS (castellan's own TLS, as in production:
//! encrypted like SSH); and through `ssh -L` port forwarding to the same sink (the usual
//! alternative, Debian's OpenSSH with its default cipher). Rounds alternate the order; medians are
//! printed with the ratios. Asserts only that every byte arrived.
//!
//!   cargo bench --bench tunnel          # 1 GiB a transfer, 5 rounds
//!   cargo test --bench tunnel           # smoke: 16 MiB, 1 round
//!
//! Settings: MIB (1024), ROUNDS (5). "Hop CPU" is the user + system time of the processes in the
//! middle (castellan's two, or sshd's session and ssh), read from /proc (USER_HZ, 100 a second on
//! Linux), per MiB carried; the sender and the sink are this process in every case.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 * 1024;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sink: reads each connection to its end and answers with the number of bytes it got.
async fn sink(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let mut n: u64 = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = s.write_all(&n.to_be_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Sends `mib` MiB to 127.0.0.1:`port`, half-closes, and waits for the sink's count.
async fn transfer(port: u16, mib: u64) -> Duration {
    let data = vec![0x5au8; CHUNK];
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let total = mib * 1024 * 1024;
    let mut sent = 0;
    while sent < total {
        s.write_all(&data).await.unwrap();
        sent += CHUNK as u64;
    }
    s.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.unwrap();
    let took = start.elapsed();
    assert_eq!(u64::from_be_bytes(count), total, "bytes were lost");
    took
}

/// User + system CPU of `roots` and all their descendants, from /proc.
fn cpu(roots: &[u32]) -> Duration {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, …, utime (14th field), stime.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = f[1].parse().unwrap_or(0);
        let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        procs.push((pid, ppid, ticks));
    }
    let mut inside: Vec<u32> = roots.to_vec();
    loop {
        let before = inside.len();
        for (pid, ppid, _) in &procs {
            if inside.contains(ppid) && !inside.contains(pid) {
                inside.push(*pid);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    let ticks: u64 = procs
        .iter()
        .filter(|(pid, ..)| inside.contains(pid))
        .map(|(.., t)| t)
        .sum();
    Duration::from_millis(ticks * 10)
}

/// A CA (its PEM written to `dir/ca.pem`) and a leaf for localhost and 127.0.0.1 (`dir/cert.pem`,
/// `dir/key.pem`), for castellan's own HTTPS.
fn certificates(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tunnel bench CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// castellan serving a TCP app for the sink (over HTTPS with `tls`), and `castellan tunnel`
/// listening for it.
fn castellan(dir: &Path, sink_port: u16, tls: bool) -> (Proc, Proc, u16) {
    let bin = env!("CARGO_BIN_EXE_castellan");
    let port = free_port();
    let config = dir.join("castellan.toml");
    let scheme = if tls { "https" } else { "http" };
    let tls_table = if tls {
        certificates(dir);
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"{scheme}://localhost:{port}\"\nstore = \"sqlite://castellan.db\"\n\
             [[apps]]\nid = \"sink\"\nhost = \"127.0.0.1\"\nupstream = \"tcp://127.0.0.1:{sink_port}\"\n{tls_table}"
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "castellan {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let key = cli(&["service-accounts", "create", "bench"])
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .unwrap()
        .to_string();
    cli(&["access", "add", "sink", "serviceAccount:bench"]);
    let serve = Proc(
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port, "castellan serve");
    let local = free_port();
    let tunnel = Proc(
        Command::new(bin)
            .args(["tunnel", &format!("{scheme}://127.0.0.1:{port}")])
            .args([
                "--local-port",
                &local.to_string(),
                "--service-account",
                "bench",
            ])
            .env("CASTELLAN_SERVICE_ACCOUNT_KEY", key)
            .env("SSL_CERT_FILE", dir.join("ca.pem"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(local, "castellan tunnel");
    (serve, tunnel, local)
}

/// Debian's OpenSSH server on loopback and `ssh -N -L` forwarding a local port to the sink.
fn ssh_forward(dir: &Path, sink_port: u16) -> (Proc, Proc, u16) {
    for path in ["/usr/sbin/sshd", "/usr/bin/ssh"] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's openssh-server and openssh-client (scripts/test-deps.sh does)"
        );
    }
    for key in ["host_key", "client_key"] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key))
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {out:?}");
    }
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        ),
    )
    .unwrap();
    let sshd = Proc(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port, "sshd");
    let local = free_port();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let ssh = Proc(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-N", "-i"])
            .arg(dir.join("client_key"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &port.to_string(),
            ])
            .args(["-L", &format!("127.0.0.1:{local}:127.0.0.1:{sink_port}")])
            .arg(format!("{user}@127.0.0.1"))
            .spawn()
            .unwrap(),
    );
    wait_port(local, "ssh -L");
    (sshd, ssh, local)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mib = env("MIB", if bench { 1024 } else { 16 });
    let rounds = env("ROUNDS", if bench { 5 } else { 1 });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_port = listener.local_addr().unwrap().port();
    tokio::spawn(sink(listener));
    let dir = tempfile::tempdir().unwrap();
    for sub in ["ssh", "plain", "tls"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let (serve, tunnel, tunnel_port) = castellan(&dir.path().join("plain"), sink_port, false);
    let (serve_tls, tunnel_tls, tls_port) = castellan(&dir.path().join("tls"), sink_port, true);
    let (sshd, ssh, ssh_port) = ssh_forward(&dir.path().join("ssh"), sink_port);
    // name, port, the processes in the middle
    let paths: [(&str, u16, Vec<u32>); 4] = [
        ("direct TCP", sink_port, vec![]),
        (
            "castellan, HTTP",
            tunnel_port,
            vec![serve.0.id(), tunnel.0.id()],
        ),
        (
            "castellan, HTTPS",
            tls_port,
            vec![serve_tls.0.id(), tunnel_tls.0.id()],
        ),
        ("ssh -L", ssh_port, vec![sshd.0.id(), ssh.0.id()]),
    ];
    // Warm-up: one small transfer each (connections, handshakes, tokens).
    for (_, port, _) in &paths {
        transfer(*port, 1).await;
    }
    let mut speed = vec![Vec::new(); paths.len()];
    let mut cost = vec![Vec::new(); paths.len()];
    for round in 0..rounds as usize {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let (name, port, middle) = &paths[i];
            let before = cpu(middle);
            let took = transfer(*port, mib).await;
            let used = cpu(middle) - before;
            let mib_s = mib as f64 / took.as_secs_f64();
            let ms_per_mib = used.as_secs_f64() * 1e3 / mib as f64;
            println!(
                "round {round}: {name:<17} {mib_s:>8.0} MiB/s   hop CPU {ms_per_mib:>6.2} ms/MiB"
            );
            speed[i].push(mib_s);
            cost[i].push(ms_per_mib);
        }
    }
    println!("\nmedians over {rounds} round(s) of {mib} MiB:");
    let med: Vec<(f64, f64)> = (0..paths.len())
        .map(|i| (median(speed[i].clone()), median(cost[i].clone())))
        .collect();
    for (i, (name, ..)) in paths.iter().enumerate() {
        println!(
            "  {name:<17} {:>8.0} MiB/s   hop CPU {:>6.2} ms/MiB",
            med[i].0, med[i].1
        );
    }
    for (i, name) in [(1, "castellan, HTTP"), (2, "castellan, HTTPS")] {
        println!(
            "{name} / ssh -L: {:.2}x the throughput, {:.2}x the CPU per MiB; / direct TCP: {:.2}x the throughput",
            med[i].0 / med[3].0,
            med[i].1 / med[3].1.max(f64::MIN_POSITIVE),
            med[i].0 / med[0].0
        );
    }
}
