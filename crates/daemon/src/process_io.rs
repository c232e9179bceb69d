//! A new process's stdio as berthd tells its shim: the stdin FIFO, and
//! stdout and stderr as paths, CRI or berth log targets (berth-shim), or
//! `file://`/`binary://` URIs (a containerd v2 shim).

use std::path::Path;

use berth_shim::crilog;

use crate::logs::LogFormat;
use crate::shim::Dialect;

/// Whether a process gets a stdin FIFO: an interactive one without a
/// terminal; with a terminal too under a containerd shim, which takes
/// terminal input only from a FIFO (berth-shim serves an attach socket).
pub fn needs_stdin_fifo(interactive: bool, terminal: bool, containerd_shim: bool) -> bool {
    interactive && (!terminal || containerd_shim)
}

/// The stdio of a new process as the shim sees it.
pub struct ProcessIo<'a> {
    /// A FIFO for interactive stdin, if any.
    pub stdin: Option<&'a Path>,
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    pub terminal: bool,
    /// How stdout and stderr are written (a CRI-format one needs berth's shim).
    pub log: crate::logs::LogFormat,
}

impl ProcessIo<'_> {
    pub(crate) fn stdin(&self) -> String {
        self.stdin.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// stdout and stderr as the shim is told them.
    pub(crate) fn output(&self, dialect: &Dialect) -> (String, String) {
        match dialect {
            Dialect::Berth => match self.log {
                LogFormat::Kubelet => (crilog::target("stdout", self.stdout), crilog::target("stderr", self.stderr)),
                LogFormat::Berth(r) => {
                    (crilog::berth_target("stdout", self.stdout, r), crilog::berth_target("stderr", self.stderr, r))
                }
                LogFormat::Plain => {
                    (self.stdout.to_string_lossy().into_owned(), self.stderr.to_string_lossy().into_owned())
                }
            },
            // containerd-shim-runc-v2 feeds stdin to a process without a
            // terminal only when it copies the output itself (`file://`:
            // stderr joins stdout); otherwise berth-logger copies it.
            Dialect::V2 { .. } if self.stdin.is_some() && !self.terminal => {
                let uri = format!("file://{}", self.stdout.display());
                (uri.clone(), uri)
            }
            Dialect::V2 { logger, .. } => {
                let rotation = match self.log {
                    LogFormat::Berth(r) => Some(r),
                    _ => None,
                };
                let uri = berth_shim::logger::logger_uri(logger, self.stdout, self.stderr, rotation);
                (uri.clone(), uri)
            }
        }
    }
}
