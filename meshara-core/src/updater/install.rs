//! Installing verified content: the [`Installer`] seam and the default [`FileInstaller`]
//! (atomic replace with a backup, a post-install check, automatic rollback).

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::update::Release;

/// A boxed future, as [`Installer::install`] returns.
pub type InstallFuture<'a> = Pin<Box<dyn Future<Output = Result<(), InstallError>> + Send + 'a>>;

/// Puts verified content in place. The updater calls it only with content whose release
/// verified against the trusted root and whose bytes hashed to the release's content hash,
/// and records the release as installed only when it returns `Ok`.
pub trait Installer: Send + Sync + 'static {
    /// Installs `content` (a file in the update cache; copy it, do not move it) as
    /// `release`. On failure the installer leaves the previous version in place.
    fn install<'a>(&'a self, release: &'a Release, content: &'a Path) -> InstallFuture<'a>;
}

/// Why an installation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the installer was doing.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The post-install check failed; with `rolled_back` the previous version is back.
    #[error("post-install check failed ({reason}); rolled back: {rolled_back}")]
    CheckFailed {
        /// What the check reported.
        reason: String,
        /// Whether the previous version was restored.
        rolled_back: bool,
    },
    /// An application installer's own error.
    #[error("{0}")]
    Other(String),
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> InstallError {
    move |source| InstallError::Io { context, source }
}

type CheckFn = Arc<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

enum Check {
    None,
    Command {
        program: PathBuf,
        args: Vec<String>,
        timeout: Duration,
    },
    Fn(CheckFn),
}

/// The default installer: replaces one file atomically.
///
/// 1. The content is copied next to the target (same directory, so the rename is atomic)
///    and synced, with the target's permissions (or [`FileInstaller::mode`]).
/// 2. The current target is hard-linked (or copied) to `<target>.bak`.
/// 3. The copy is renamed over the target and the directory synced: the target is always
///    either the old or the new file, never a mix.
/// 4. The post-install check runs; if it fails, `<target>.bak` is renamed back.
pub struct FileInstaller {
    target: PathBuf,
    mode: Option<u32>,
    check: Check,
}

impl std::fmt::Debug for FileInstaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileInstaller")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl FileInstaller {
    /// Installs to `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            mode: None,
            check: Check::None,
        }
    }

    /// Unix permissions of the installed file (default: those of the file it replaces, or
    /// `0o644` for a first install).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// After replacing, runs `program args…` (for a binary, typically the target itself
    /// with `--version`); a non-zero exit or running past `timeout` rolls back.
    pub fn check_command(
        mut self,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
        timeout: Duration,
    ) -> Self {
        self.check = Check::Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            timeout,
        };
        self
    }

    /// After replacing, calls `check` with the target path; an `Err` rolls back.
    pub fn check_fn(
        mut self,
        check: impl Fn(&Path) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.check = Check::Fn(Arc::new(check));
        self
    }

    /// The installed file.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the previous version is kept.
    pub fn backup(&self) -> PathBuf {
        sibling(&self.target, ".bak")
    }

    /// Restores the backup over the target (an operator's manual rollback).
    pub fn restore_backup(&self) -> Result<(), InstallError> {
        fs::rename(self.backup(), &self.target).map_err(io_err("restoring the backup"))?;
        sync_dir(&self.target)
    }

    async fn run_check(&self) -> Result<(), String> {
        match &self.check {
            Check::None => Ok(()),
            Check::Fn(f) => {
                let (f, target) = (f.clone(), self.target.clone());
                tokio::task::spawn_blocking(move || f(&target))
                    .await
                    .map_err(|e| format!("check panicked: {e}"))?
            }
            Check::Command {
                program,
                args,
                timeout,
            } => {
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", program.display()))?;
                match tokio::time::timeout(*timeout, child.wait()).await {
                    Ok(Ok(status)) if status.success() => Ok(()),
                    Ok(Ok(status)) => Err(format!("{} exited with {status}", program.display())),
                    Ok(Err(e)) => Err(format!("waiting for {}: {e}", program.display())),
                    Err(_) => Err(format!("{} ran past {timeout:?}", program.display())),
                }
            }
        }
    }
}

impl Installer for FileInstaller {
    fn install<'a>(&'a self, _release: &'a Release, content: &'a Path) -> InstallFuture<'a> {
        Box::pin(async move {
            let had_previous = {
                // Blocking file work, off the async threads.
                let (target, mode, content) = (self.target.clone(), self.mode, content.to_owned());
                tokio::task::spawn_blocking(move || replace(&target, mode, &content))
                    .await
                    .map_err(|e| InstallError::Other(format!("install task failed: {e}")))??
            };
            if let Err(reason) = self.run_check().await {
                let rolled_back = roll_back(&self.target, had_previous);
                tracing::warn!(target = %self.target.display(), %reason, rolled_back, "post-install check failed");
                return Err(InstallError::CheckFailed {
                    reason,
                    rolled_back,
                });
            }
            Ok(())
        })
    }
}

fn replace(target: &Path, mode: Option<u32>, content: &Path) -> Result<bool, InstallError> {
    let new = sibling(target, ".meshara-new");
    let _ = fs::remove_file(&new);
    fs::copy(content, &new).map_err(io_err("copying the new version"))?;
    let mode = match mode {
        Some(m) => Some(m),
        None => fs::metadata(target).ok().map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode()
        }),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&new, fs::Permissions::from_mode(mode.unwrap_or(0o644)))
            .map_err(io_err("setting permissions"))?;
    }
    fs::File::open(&new)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing the new version"))?;
    let had_previous = target.exists();
    if had_previous {
        let backup = sibling(target, ".bak");
        let _ = fs::remove_file(&backup);
        if fs::hard_link(target, &backup).is_err() {
            fs::copy(target, &backup).map_err(io_err("backing up"))?;
        }
    }
    fs::rename(&new, target).map_err(io_err("replacing the target"))?;
    sync_dir(target)?;
    Ok(had_previous)
}

fn roll_back(target: &Path, had_previous: bool) -> bool {
    let restored = if had_previous {
        fs::rename(sibling(target, ".bak"), target).is_ok()
    } else {
        fs::remove_file(target).is_ok()
    };
    restored && sync_dir(target).is_ok()
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    target.with_file_name(name)
}

fn sync_dir(target: &Path) -> Result<(), InstallError> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release::for_content("app", "stable", "1.0.0", 1, u64::MAX, b"x", 1).unwrap()
    }

    #[tokio::test]
    async fn replaces_atomically_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        fs::write(&target, b"v1").unwrap();
        let content = dir.path().join("content");
        fs::write(&content, b"v2").unwrap();
        let installer = FileInstaller::new(&target).mode(0o755);
        installer.install(&release(), &content).await.unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"v2");
        assert_eq!(fs::read(installer.backup()).unwrap(), b"v1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o755
        );
        installer.restore_backup().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"v1");
    }

    #[tokio::test]
    async fn a_failed_check_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        fs::write(&target, b"good").unwrap();
        let content = dir.path().join("content");
        fs::write(&content, b"bad").unwrap();
        let installer = FileInstaller::new(&target).check_fn(|path| {
            match fs::read(path).map_err(|e| e.to_string())?.as_slice() {
                b"bad" => Err("refuses to start".into()),
                _ => Ok(()),
            }
        });
        let err = installer.install(&release(), &content).await.unwrap_err();
        assert!(matches!(
            err,
            InstallError::CheckFailed {
                rolled_back: true,
                ..
            }
        ));
        assert_eq!(fs::read(&target).unwrap(), b"good");
        // Nothing left behind but the target.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn a_failing_or_hanging_check_command_rolls_back_a_first_install() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        let content = dir.path().join("content");
        fs::write(&content, b"new").unwrap();
        let installer = FileInstaller::new(&target).check_command(
            "false",
            Vec::<String>::new(),
            Duration::from_secs(5),
        );
        assert!(installer.install(&release(), &content).await.is_err());
        assert!(!target.exists());
        let installer =
            FileInstaller::new(&target).check_command("sleep", ["30"], Duration::from_millis(200));
        let err = installer.install(&release(), &content).await.unwrap_err();
        assert!(err.to_string().contains("ran past"), "{err}");
        assert!(!target.exists());
        let installer = FileInstaller::new(&target).check_command(
            "true",
            Vec::<String>::new(),
            Duration::from_secs(5),
        );
        installer.install(&release(), &content).await.unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }
}
