use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{wait_for, Error, Result};

/// How [`ChildGuard::spawn_logged`] opens the log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// Start the file afresh.
    Truncate,
    /// Add to what is there, so a restarted process keeps its earlier
    /// output in the same file.
    Append,
}

/// A child process that is SIGKILLed and reaped when the guard drops, also
/// when the test or the harness holding it panics, so no process outlives
/// its owner (and no zombie stays behind).
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Starts `cmd` as configured (stdio included). `name` is what errors
    /// call the process. Fails with [`Error::Io`] if it cannot start.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Result<Self> {
        let name = name.into();
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting {name} ({:?})",
            cmd.get_program()
        )))?;
        Ok(ChildGuard {
            name,
            child,
            log: None,
        })
    }

    /// Starts `cmd` with stdin from `/dev/null` and stdout and stderr both
    /// going to `log` (its folder is created if needed). Errors about the
    /// process then point at that file.
    pub fn spawn_logged(
        name: impl Into<String>,
        cmd: &mut Command,
        log: &Path,
        mode: LogMode,
    ) -> Result<Self> {
        let out = open_log(log, mode)?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("duplicating {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut guard = Self::spawn(name, cmd)?;
        guard.log = Some(log.to_owned());
        Ok(guard)
    }

    /// What errors call the process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (still valid after the process exited, until the
    /// guard reaps it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to, when started with
    /// [`spawn_logged`](Self::spawn_logged).
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Its exit status if it has exited; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the process is still running (a paused one counts).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails with [`Error::Exited`] (naming the log file) if the process
    /// has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(self.exited(status)),
        }
    }

    /// SIGKILLs the process (no chance to clean up) and reaps it. Does
    /// nothing to a process that has already exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (and SIGCONT, in case it is paused) and waits up to
    /// `timeout` for the process to exit, returning its exit status.
    ///
    /// Fails with [`Error::Exited`] if it had exited before, and with
    /// [`Error::Timeout`] if it ignores SIGTERM, after SIGKILLing it.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Err(self.exited(status));
        }
        self.signal(Signal::SIGTERM)?;
        self.signal(Signal::SIGCONT)?;
        let what = format!("{} to exit after SIGTERM", self.name);
        let result = wait_for(&what, timeout, || {
            let status = self.child.try_wait();
            async move { status.map_err(Error::io("waiting for the process")) }
        })
        .await;
        match result {
            Err(Error::Timeout { what, after, .. }) => {
                self.kill();
                Err(Error::Timeout {
                    what,
                    after,
                    log: self.log.clone(),
                })
            }
            other => other,
        }
    }

    /// Stops the process with SIGSTOP, as a GC pause or a frozen VM would.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Reads the process's stdout (which must be [`Stdio::piped`]) until a
    /// line starting with `prefix`, and returns that line.
    ///
    /// Fails with [`Error::Exited`] if stdout ends first, with
    /// [`Error::Timeout`] after `timeout`, and with [`Error::Io`] when
    /// stdout is not piped or was taken already. The rest of stdout is
    /// closed: a process that writes more after the line gets EPIPE.
    pub async fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let missing = || std::io::Error::other("stdout is not piped");
        let stdout = self.child.stdout.take().ok_or_else(missing);
        let stdout = stdout
            .and_then(tokio::process::ChildStdout::from_std)
            .map_err(Error::io(format!("reading {}'s stdout", self.name)))?;
        let mut lines = BufReader::new(stdout).lines();
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with(prefix) {
                    return Ok(Some(line));
                }
            }
            Ok::<_, std::io::Error>(None)
        };
        let what = format!("{} to print {prefix:?}", self.name);
        match tokio::time::timeout(timeout, read).await {
            Err(_) => Err(Error::Timeout {
                what,
                after: timeout,
                log: self.log.clone(),
            }),
            Ok(Err(e)) => Err(Error::io(what)(e)),
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                // Stdout closed: the process is exiting; wait for its status.
                let status = self.child.wait().map_err(Error::io("reaping"))?;
                Err(self.exited(status))
            }
        }
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).map_err(|e| Error::Io {
            what: format!("sending {signal} to {} ({pid})", self.name),
            source: e.into(),
        })
    }

    fn exited(&self, status: ExitStatus) -> Error {
        Error::Exited {
            what: self.name.clone(),
            status,
            log: self.log.clone(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn open_log(path: &Path, mode: LogMode) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let mut options = OpenOptions::new();
    match mode {
        LogMode::Truncate => options.write(true).create(true).truncate(true),
        LogMode::Append => options.append(true).create(true),
    };
    options
        .open(path)
        .map_err(Error::io(format!("opening {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn finds_a_line_and_kills_on_drop() {
        let mut cmd = sh("echo starting; echo READY 42; sleep 60");
        cmd.stdout(Stdio::piped());
        let mut child = ChildGuard::spawn("sleeper", &mut cmd).unwrap();
        let line = child
            .wait_for_line("READY", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(line, "READY 42");
        assert!(child.is_running());
        let pid = Pid::from_raw(child.pid() as i32);
        drop(child);
        // Reaped: the pid no longer names a process of ours.
        assert!(nix::sys::signal::kill(pid, None).is_err());
    }

    #[tokio::test]
    async fn reports_exit_with_its_log() {
        let log = std::env::temp_dir().join(format!("testkit-{}.log", crate::random_suffix()));
        let mut child = ChildGuard::spawn_logged(
            "quitter",
            &mut sh("echo bye; exit 3"),
            &log,
            LogMode::Append,
        )
        .unwrap();
        let err = wait_for("the exit", Duration::from_secs(10), || {
            let alive = child.check_alive();
            async move { Ok::<_, Error>(alive.err()) }
        })
        .await
        .unwrap();
        assert!(err.to_string().contains("quitter exited"), "{err}");
        assert!(
            err.to_string().contains(&log.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "bye\n");
        let _ = std::fs::remove_file(log);
    }

    #[tokio::test]
    async fn terminates_with_sigterm() {
        let mut child = ChildGuard::spawn("sleeper", &mut sh("exec sleep 60")).unwrap();
        let status = child.terminate(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        assert!(matches!(
            child.terminate(Duration::from_secs(1)).await,
            Err(Error::Exited { .. })
        ));
    }
}
