//! Bytes a program carries (an embedded shared library, say) written once to a private per-user
//! cache file that other processes can open by path, and checked before every use.
//!
//! Contract: [`materialize`] returns `<cache>/<app>/<key>/<name>` holding exactly `bytes`. The
//! cache is `$XDG_CACHE_HOME`, else `$HOME/.cache` (both created if missing), else
//! `/tmp/<app>-<uid>` (the first that works). The `<app>` and `<key>` directories are created
//! mode 0700 and must be owned by the caller's effective uid with no access for group or others;
//! every step below the cache goes through [`safedir`]'s directory handles with `O_NOFOLLOW`, so nobody can swap a directory or
//! plant a symlink under us. An existing file is used only if it is a regular file of ours whose
//! content equals `bytes`; otherwise a new one is written under a unique temporary name
//! (`O_EXCL`), synced and renamed into place, so concurrent callers never see a partial file.
//! Every descriptor is close-on-exec.
//!
//! ```
//! let home = tempfile::tempdir().unwrap();
//! std::env::set_var("XDG_CACHE_HOME", home.path());
//! let path = privcache::materialize("demo", "v1-abcd", "data.bin", b"hello").unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"hello");
//! assert_eq!(path, home.path().join("demo/v1-abcd/data.bin"));
//! ```

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use safedir::{Dir, PRIVATE_DIR};

/// Writes `bytes` to `<cache>/<app>/<key>/<name>` unless that file already holds them, and
/// returns its path. `app`, `key` and `name` must be single path components.
pub fn materialize(app: &str, key: &str, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    materialize_as(Access::Private, app, key, name, bytes)
}

/// Who may read the cached file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The owner only: directories 0700 under the user's cache ([`materialize`]).
    Private,
    /// Every user may read it, only the owner may change it: directories and file 0755 under
    /// `/var/cache/<app>`, else `/tmp/<app>-<uid>` — for a privileged program whose file
    /// processes of other users must open (a library root loads into another user's program).
    Shared,
}

/// [`materialize`] with the given [`Access`]. A [`Access::Shared`] directory is accepted only if
/// it is ours and nobody else can write to it.
pub fn materialize_as(
    access: Access,
    app: &str,
    key: &str,
    name: &str,
    bytes: &[u8],
) -> io::Result<PathBuf> {
    for part in [app, key, name] {
        if part.is_empty() || part.contains('/') || part == "." || part == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{part:?} is not a single path component"),
            ));
        }
    }
    let mut first_error = None;
    let bases = match access {
        Access::Private => cache_bases(app),
        Access::Shared => vec![
            (PathBuf::from("/var/cache"), app.to_owned()),
            (PathBuf::from("/tmp"), format!("{app}-{}", safedir::euid())),
        ],
    };
    for (base, app_dir_name) in bases {
        match materialize_in(access, &base, &app_dir_name, key, name, bytes) {
            Ok(path) => return Ok(path),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| io::Error::other("no cache directory")))
}

/// [`materialize`] under one cache directory.
fn materialize_in(
    access: Access,
    base: &Path,
    app_dir_name: &str,
    key: &str,
    name: &str,
    bytes: &[u8],
) -> io::Result<PathBuf> {
    let base_dir = match access {
        Access::Private => Dir::create_all(base, PRIVATE_DIR),
        // A shared base is the system's (`/var/cache`, `/tmp`): used as it is, never created.
        Access::Shared => Dir::open(base),
    }
    .map_err(|e| with_path(e, base))?;
    let app_dir = own_dir(access, &base_dir, app_dir_name)?;
    let key_dir = own_dir(access, &app_dir, key)?;
    let path = key_dir.join(name);
    if holds(&key_dir, name, bytes)? {
        return Ok(path);
    }
    write_new(access, &key_dir, name, bytes).map_err(|e| with_path(e, &path))?;
    if holds(&key_dir, name, bytes)? {
        Ok(path)
    } else {
        Err(io::Error::other(format!(
            "{}: written but does not read back the same (is the disk failing?)",
            path.display()
        )))
    }
}

/// The cache directories to try, in order, each with the name of the application's directory
/// inside it: `$XDG_CACHE_HOME`, `$HOME/.cache`, then `/tmp` (for a user without a usable home).
fn cache_bases(app: &str) -> Vec<(PathBuf, String)> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    xdg.into_iter()
        .chain(home)
        .filter(|p| p.is_absolute())
        .map(|p| (p, app.to_owned()))
        .chain([(PathBuf::from("/tmp"), format!("{app}-{}", safedir::euid()))])
        .collect()
}

/// The directory `name` in `parent`, made if missing (0700, or 0755 when shared); it must be
/// ours (not a link), with no access for group or others (private) or no write access for them
/// (shared).
fn own_dir(access: Access, parent: &Dir, name: &str) -> io::Result<Dir> {
    let path = parent.join(name);
    let (mode, forbidden, what) = match access {
        Access::Private => (PRIVATE_DIR, 0o077, "a private"),
        Access::Shared => (0o755, 0o022, "an owner-only writable"),
    };
    let dir = parent
        .ensure_dir(name, mode)
        .map_err(|e| with_path(e, &path))?;
    let st = dir.stat().map_err(|e| with_path(e, &path))?;
    if st.mode & forbidden != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not {what} directory (mode {:o}); remove it",
                path.display(),
                st.mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// Whether `dir/name` is a regular file of ours holding exactly `bytes`.
fn holds(dir: &Dir, name: &str, bytes: &[u8]) -> io::Result<bool> {
    let Ok(mut file) = dir.open_file(name) else {
        return Ok(false);
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != safedir::euid() || meta.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let mut content = Vec::with_capacity(bytes.len());
    file.read_to_end(&mut content)?;
    Ok(content == bytes)
}

/// Writes `bytes` to a fresh temporary file in `dir`, syncs it and renames it to `name`.
fn write_new(access: Access, dir: &Dir, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    let _ = dir.remove_file(&tmp);
    let mode = match access {
        Access::Private => 0o700,
        Access::Shared => 0o755,
    };
    let mut file = dir.create_file(&tmp, mode)?;
    let done = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| dir.rename(&tmp, name));
    if done.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    done
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    /// The tests change the process's environment.
    static ENV: Mutex<()> = Mutex::new(());

    fn with_cache<T>(f: impl FnOnce(&Path) -> T) -> T {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CACHE_HOME", dir.path());
        f(dir.path())
    }

    #[test]
    fn materialize__fresh_then_again__then_same_file_private_and_unchanged() {
        with_cache(|cache| {
            let p = materialize("app", "k1", "lib.so", b"\x7fELF one").unwrap();
            assert_eq!(p, cache.join("app/k1/lib.so"));
            assert_eq!(std::fs::read(&p).unwrap(), b"\x7fELF one");
            for dir in [cache.join("app"), cache.join("app/k1")] {
                let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
            }
            let before = std::fs::metadata(&p).unwrap().modified().unwrap();
            assert_eq!(
                materialize("app", "k1", "lib.so", b"\x7fELF one").unwrap(),
                p
            );
            assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        });
    }

    #[test]
    fn materialize__file_altered_or_replaced_by_symlink__then_rewritten_with_the_right_bytes() {
        with_cache(|cache| {
            let p = materialize("app", "k", "lib.so", b"good").unwrap();
            std::fs::write(&p, b"evil").unwrap();
            assert_eq!(materialize("app", "k", "lib.so", b"good").unwrap(), p);
            assert_eq!(std::fs::read(&p).unwrap(), b"good");
            let elsewhere = cache.join("elsewhere");
            std::fs::write(&elsewhere, b"good").unwrap();
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
            materialize("app", "k", "lib.so", b"good").unwrap();
            assert!(!std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink());
        });
    }

    #[test]
    fn materialize__directory_not_private_or_a_symlink__then_refused_naming_it() {
        with_cache(|cache| {
            std::fs::create_dir(cache.join("app")).unwrap();
            std::fs::set_permissions(cache.join("app"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let e = materialize_in(Access::Private, cache, "app", "k", "lib.so", b"x")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not a private directory") && e.contains("app"),
                "{e}"
            );
            std::fs::create_dir(cache.join("target")).unwrap();
            std::os::unix::fs::symlink(cache.join("target"), cache.join("app2")).unwrap();
            assert!(materialize_in(Access::Private, cache, "app2", "k", "lib.so", b"x").is_err());
            // Shared: readable by all, writable by the owner only.
            let p = materialize_in(Access::Shared, cache, "app3", "k", "lib.so", b"x").unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&p), 0o755);
            assert_eq!(mode(&cache.join("app3/k")), 0o755);
            std::fs::set_permissions(cache.join("app3"), std::fs::Permissions::from_mode(0o777))
                .unwrap();
            let e = materialize_in(Access::Shared, cache, "app3", "k", "lib.so", b"x")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not an owner-only writable directory"), "{e}");
        });
    }

    #[test]
    fn materialize__bad_component__then_invalid_input() {
        assert!(materialize("app", "../x", "lib.so", b"x").is_err());
        assert!(materialize("app", "k", "", b"x").is_err());
    }
}
