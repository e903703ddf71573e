//! A throw-away PostgreSQL server (initdb and pg_ctl in a temp dir, on a free
//! port) that a test may stop and start, e.g. to take the database away
//! from relays under load.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A throw-away PostgreSQL cluster; stopped (immediately) when dropped.
pub struct DisposablePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The newest PostgreSQL server binaries installed.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb")
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl DisposablePostgres {
    fn run(&self, program: &str, args: &[&str]) -> bool {
        let exe = self.bin.join(program);
        // initdb and postgres refuse to run as root.
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.status().map(|s| s.success()).unwrap_or(false)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Creates the cluster (trust auth, user `postgres`) and starts it.
    pub fn init() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown temp dir to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let pg = Self {
            dir,
            bin: pg_bin(),
            port,
        };
        let data = pg.data();
        assert!(
            pg.run(
                "initdb",
                &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]
            ),
            "initdb"
        );
        pg.start();
        pg
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").display().to_string();
        assert!(
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &options,
                    "-l",
                    &log,
                    "-w",
                    "start"
                ]
            ),
            "pg_ctl start"
        );
    }

    /// Stops the server at once (`-m immediate`: no goodbye to clients).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for DisposablePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
