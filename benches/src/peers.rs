//! The servers the peers harness compares, each a process of its own pinned to one core:
//! edge-proxy, NGINX and Varnish, configured from the templates in `benches/peers/`, started,
//! awaited until they listen, and stopped when dropped (SIGTERM, so NGINX's master and
//! Varnish's manager stop their children).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The templates' folder (`benches/peers/`).
pub fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// `template` (a file under `benches/peers/`) with every `{{name}}` replaced by its value;
/// an error names a slot left unfilled.
pub fn render(template: &str, slots: &[(&str, String)]) -> anyhow::Result<String> {
    let path = templates_dir().join(template);
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (name, value) in slots {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(start) = text.find("{{") {
        let slot: String = text[start..].chars().take(40).collect();
        anyhow::bail!("{template}: slot {slot:?} has no value");
    }
    Ok(text)
}

/// A server process (and the processes it starts), stopped with SIGTERM, then SIGKILL.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub listen: SocketAddr,
    child: Child,
}

impl Server {
    /// Runs `program args` on CPU core `core` only (`taskset`), output to `log`.
    pub fn spawn_pinned(
        name: &str,
        listen: SocketAddr,
        core: usize,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: taskset -c {core} {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            listen,
            child,
        })
    }

    /// The process whose tree's CPU is the server's (taskset execs the program in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a TCP connection to the listener succeeds, or fails with the log's tail when
    /// the process exits or `timeout` passes.
    pub async fn wait_listening(&mut self, log: &Path, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            let exited = self.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!(
                    "{} did not listen on {} ({}); its log {}:\n{}",
                    self.name,
                    self.listen,
                    exited.map_or("timed out".into(), |s| format!("exited: {s}")),
                    log.display(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets NGINX's master stop its worker and Varnish's manager its child.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of a program on `PATH` (Debian puts nginx and varnishd in /usr/sbin).
pub fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file());
    found.with_context(|| {
        format!("{name} is not installed (make bench-peers installs nginx-light and varnish)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_name_a_missing_slot() {
        let slots = [
            ("backend_port", "8081".to_string()),
            ("unused", "x".to_string()),
        ];
        let vcl = render("varnish.vcl", &slots).unwrap();
        assert!(vcl.contains(".port = \"8081\";"));
        let error = render("varnish.vcl", &[]).unwrap_err().to_string();
        assert!(error.contains("{{backend_port}}"), "{error}");
    }
}
