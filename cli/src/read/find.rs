//! Which session the path a user gave names: a session (`session_<...>`) or one of its processes
//! (`pid_<pid>`) as it is; an output directory (`tracer spawn -o DIR`, or the default
//! `/tmp/ada_traces/<user>`) by its only session, said on stderr; `/tmp/ada_traces` itself as the
//! user's own directory under it. An output directory with several sessions, or a directory with
//! none, is refused with a line naming what to pass instead.

use std::path::{Path, PathBuf};

use super::text::clean;
use super::ReadFailure;
use crate::error::CliError;

/// What `path` names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// A session directory, or a process directory of one, or something the session reader must
    /// judge (a file, an unreadable directory): read it as given.
    AsGiven,
    /// The only session of the output directory `output`.
    OnlySession {
        /// The session directory.
        session: PathBuf,
        /// The output directory it was found in.
        output: PathBuf,
    },
}

/// The session directory `path` names, saying on stderr which one was chosen when it is not
/// `path` itself.
pub(super) fn session_path(path: &Path) -> Result<PathBuf, CliError> {
    Ok(match find(path, &default_root_own_dir())? {
        Found::AsGiven => path.to_path_buf(),
        Found::OnlySession { session, output } => {
            let note = format!(
                "reading {}, the only session in {}",
                session.display(),
                output.display()
            );
            eprintln!("tracer: {}", clean(&note));
            session
        }
    })
}

/// The default output directory and the user's own directory under it.
fn default_root_own_dir() -> (PathBuf, String) {
    (
        PathBuf::from(crate::args::DEFAULT_OUTPUT),
        safedir::user_dir_name(),
    )
}

/// What `path` names, `(root, user)` being the default output directory and the user's name
/// under it.
fn find(path: &Path, (root, user): &(PathBuf, String)) -> Result<Found, CliError> {
    if !path.exists() {
        let path = path.to_path_buf();
        return Err(ReadFailure::NoSession { path }.into());
    }
    if !path.is_dir() || is_session(path) {
        return Ok(Found::AsGiven);
    }
    let Ok(mut sessions) = sessions_in(path) else {
        // Unreadable: the session reader names the problem.
        return Ok(Found::AsGiven);
    };
    let own = path.join(user);
    if sessions.is_empty() && same_dir(path, root) && own.is_dir() {
        return find(&own, &(root.clone(), user.clone()));
    }
    match sessions.len() {
        0 => Err(ReadFailure::NoSessionIn {
            path: path.to_path_buf(),
        }
        .into()),
        1 => Ok(Found::OnlySession {
            session: path.join(sessions.remove(0)),
            output: path.to_path_buf(),
        }),
        _ => Err(ReadFailure::OutputDirectory {
            path: path.to_path_buf(),
            sessions,
        }
        .into()),
    }
}

/// Whether `dir` is a session or a process of one: it has a manifest or `pid_<pid>` directories.
fn is_session(dir: &Path) -> bool {
    if std::fs::symlink_metadata(dir.join("manifest.json")).is_ok() {
        return true;
    }
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pid_") && e.path().is_dir())
    })
}

/// The names of the `session_<...>` directories in `dir`, newest first.
fn sessions_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("session_"))
        .collect();
    names.sort_by_cached_key(|name| std::cmp::Reverse(age_key(name)));
    Ok(names)
}

/// Orders session names by when they were made: `session_<YYYYmmdd_HHMMSS>` then the `_<n>`
/// suffix of a second's later sessions, numerically (`_10` after `_9`).
fn age_key(name: &str) -> (String, u32) {
    let rest = name.strip_prefix("session_").unwrap_or(name);
    // The stamp is `YYYYmmdd_HHMMSS`: 15 characters.
    match rest.get(..15).zip(rest.get(15..)) {
        Some((stamp, suffix)) => match suffix.strip_prefix('_').map(str::parse::<u32>) {
            Some(Ok(n)) => (stamp.to_owned(), n),
            _ if suffix.is_empty() => (stamp.to_owned(), 1),
            _ => (rest.to_owned(), 0),
        },
        None => (rest.to_owned(), 0),
    }
}

/// Whether `a` and `b` name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
    }

    fn no_default() -> (PathBuf, String) {
        (PathBuf::from("/nonexistent/default"), "me".to_owned())
    }

    #[test]
    fn find__session_or_process_directory__then_as_given() {
        let t = tempfile::tempdir().unwrap();
        mkdirs(t.path(), &["session_20261205_101010/pid_7"]);
        std::fs::write(
            t.path().join("session_20261205_101010/pid_7/manifest.json"),
            "",
        )
        .unwrap();
        for p in ["session_20261205_101010", "session_20261205_101010/pid_7"] {
            assert_eq!(
                find(&t.path().join(p), &no_default()).unwrap(),
                Found::AsGiven
            );
        }
    }

    #[test]
    fn find__output_directory_with_one_session__then_that_session() {
        let t = tempfile::tempdir().unwrap();
        mkdirs(t.path(), &["session_20261205_101010/pid_7", "other"]);
        assert_eq!(
            find(t.path(), &no_default()).unwrap(),
            Found::OnlySession {
                session: t.path().join("session_20261205_101010"),
                output: t.path().to_path_buf(),
            }
        );
    }

    #[test]
    fn find__output_directory_with_seven_sessions__then_the_five_newest_named_newest_first() {
        let t = tempfile::tempdir().unwrap();
        mkdirs(
            t.path(),
            &[
                "session_20261205_101010",
                "session_20261205_101010_2",
                "session_20261205_101010_10",
                "session_20261205_101010_9",
                "session_20261204_235959",
                "session_20261205_090000",
                "session_20261205_120000",
            ],
        );
        let err = find(t.path(), &no_default()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let want = format!(
            "{}: an output directory with 7 sessions (newest first: session_20261205_120000, \
             session_20261205_101010_10, session_20261205_101010_9, session_20261205_101010_2, \
             session_20261205_101010 and 2 older); pass the one to read, e.g. {}",
            t.path().display(),
            t.path().join("session_20261205_120000").display()
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn find__empty_directory__then_says_there_is_no_session() {
        let t = tempfile::tempdir().unwrap();
        let err = find(t.path(), &no_default()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains(": no session here"), "{err}");
    }

    #[test]
    fn find__default_root__then_the_users_own_directory_in_it() {
        let t = tempfile::tempdir().unwrap();
        mkdirs(
            t.path(),
            &["me/session_20261205_101010", "someone/session_1"],
        );
        let default = (t.path().to_path_buf(), "me".to_owned());
        assert_eq!(
            find(t.path(), &default).unwrap(),
            Found::OnlySession {
                session: t.path().join("me/session_20261205_101010"),
                output: t.path().join("me"),
            }
        );
    }

    #[test]
    fn find__a_file__then_as_given_for_the_reader_to_refuse() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(find(&file, &no_default()).unwrap(), Found::AsGiven);
    }
}
