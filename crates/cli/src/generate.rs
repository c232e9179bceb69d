//! `berth completion bash|zsh|fish` and `berth man --dir DIR`: shell
//! completions and man pages generated from the clap definitions
//! (clap_complete, clap_mangen), so they never drift from the CLI.
//! `make install` runs both (scripts/install.sh).

use std::path::Path;

use clap::CommandFactory;

use crate::client::Failure;

/// Writes the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<i32, Failure> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "berth", &mut std::io::stdout());
    Ok(0)
}

/// Writes `berth.1` and one `berth-SUBCOMMAND.1` per subcommand into `dir`
/// (made if missing).
pub fn man(dir: &Path) -> Result<i32, Failure> {
    let failed = |e: std::io::Error| Failure::new(format!("write man pages to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(crate::Cli::command(), dir).map_err(failed)?;
    Ok(0)
}
