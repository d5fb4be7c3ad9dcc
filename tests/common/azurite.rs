//! Azurite, Microsoft's Azure Blob Storage emulator, on 127.0.0.1 for the tests:
//! installed from the npm registry into `target/azurite/` on first use (Node.js and
//! npm are the only things it needs from the machine), started once per test
//! process on a free port, in memory, and ended with the process.
//!
//! The process environment points `az://<container>/…` URLs at it the way an
//! operator points them at Azure: `AZURE_STORAGE_USE_EMULATOR=true` and
//! `AZURITE_BLOB_STORAGE_URL` (object_store's emulator settings; the emulator's
//! well-known account and key).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::Digest;

/// The version the tests were written against.
const AZURITE: &str = "azurite@3.37.0";
/// The emulator's well-known account and key (public, documented by Microsoft).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    port: u16,
    containers: AtomicU64,
}

/// The emulator, started on first use; `az://` URLs resolve to it from then on.
pub fn azurite() -> &'static Azurite {
    static SERVER: OnceLock<Azurite> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = Azurite::start();
        for (key, value) in server.env() {
            std::env::set_var(key, value);
        }
        server
    })
}

impl Azurite {
    fn start() -> Self {
        let bin = install();
        let port = free_port();
        // Started from a thread that lives as long as the process, so that the
        // parent-death signal ends the emulator with the process, not with a test.
        let (sent, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut command = Command::new(&bin);
            command
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--inMemoryPersistence", "--silent", "--skipApiVersionCheck"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: only async-signal-safe work (one prctl) between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let child = command.spawn();
            let _ = sent.send(child.map(|_| ()));
            loop {
                std::thread::park();
            }
        });
        started
            .recv()
            .expect("the emulator's thread answers")
            .unwrap_or_else(|e| panic!("cannot start Azurite ({}): {e}", AZURITE));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            containers: AtomicU64::new(0),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What a process needs in its environment to reach the emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
        ]
    }

    /// A new, empty container.
    pub fn container(&self) -> String {
        let name = format!(
            "dvi-test-{}-{}",
            std::process::id(),
            self.containers.fetch_add(1, Ordering::SeqCst)
        );
        self.create_container(&name);
        name
    }

    /// Creates `name` with one request signed with the account key (object_store
    /// has no call for it; an operator uses the portal or `az storage container
    /// create`).
    fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("the well-known key is base64");
        let signature =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            port = self.port
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "creating container {name}: {answer}"
        );
    }
}

/// HMAC-SHA256 (RFC 2104), for the one signed request above.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = sha2::Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    sha2::Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// The emulator's launcher, installed with npm into `target/azurite/` unless there.
fn install() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/azurite");
    let bin = dir.join("node_modules/.bin/azurite-blob");
    if bin.exists() {
        return bin;
    }
    // One install at a time, across the test processes that may start together.
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("install.lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if bin.exists() => return bin,
            // A lock left by a test process that died while installing.
            Err(_)
                if std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300)) =>
            {
                let _ = std::fs::remove_file(&lock);
            }
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "waited 600 s for {}",
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(AZURITE)
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_file(&lock);
    match status {
        Ok(s) if s.success() && bin.exists() => bin,
        other => panic!(
            "installing {AZURITE} with npm into {} failed ({other:?}); the Azure tests need \
             Node.js and npm (apt-get install nodejs npm)",
            dir.display()
        ),
    }
}
