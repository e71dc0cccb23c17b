use super::*;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `f` with the given umask, then restores it. Modes must not depend on it.
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's mask.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

#[test]
fn create_all__any_umask__then_created_dirs_and_files_have_exact_private_modes() {
    for mask in [0o000, 0o022, 0o077] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x/y/z");
        let (dir, file) = with_umask(mask, || {
            let dir = Dir::create_all(&path, PRIVATE_DIR).unwrap();
            let sub = dir.create_dir("s", PRIVATE_DIR).unwrap();
            sub.create_file("f", PRIVATE_FILE).unwrap();
            (dir, sub.join("f"))
        });
        for p in ["x", "x/y", "x/y/z", "x/y/z/s"] {
            assert_eq!(mode(&tmp.path().join(p)), 0o700, "{p} under umask {mask:o}");
        }
        assert_eq!(mode(&file), 0o600, "umask {mask:o}");
        assert_eq!(dir.path(), path);
    }
}

#[test]
fn create_file__name_exists_or_is_a_link__then_refused_and_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let dir = Dir::create_all(&tmp.path().join("d"), PRIVATE_DIR).unwrap();
    symlink(&victim, tmp.path().join("d/link")).unwrap();
    std::fs::write(tmp.path().join("d/old"), b"old").unwrap();
    for name in ["link", "old"] {
        let err = dir.create_file(name, PRIVATE_FILE).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{name}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(std::fs::read(tmp.path().join("d/old")).unwrap(), b"old");
}

#[test]
fn dir_handle__directory_swapped_for_a_link_after_open__then_writes_stay_in_the_opened_one() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = Dir::create_all(&tmp.path().join("out"), PRIVATE_DIR).unwrap();
    let session = out.create_dir("session", PRIVATE_DIR).unwrap();
    std::fs::rename(tmp.path().join("out/session"), tmp.path().join("out/moved")).unwrap();
    symlink(&elsewhere, tmp.path().join("out/session")).unwrap();
    let mut f = session.create_file("m.tmp", PRIVATE_FILE).unwrap();
    f.write_all(b"x").unwrap();
    session.rename("m.tmp", "m").unwrap();
    assert!(tmp.path().join("out/moved/m").exists());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(session.names().unwrap(), vec!["m".to_owned()]);
}

#[test]
fn open_own_dir__a_link__then_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Dir::open(tmp.path()).unwrap();
    std::fs::create_dir(tmp.path().join("real")).unwrap();
    symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    assert!(dir.open_own_dir("link").is_err());
    assert!(dir.ensure_dir("link", PRIVATE_DIR).is_err());
    assert!(dir.is_symlink("link").unwrap());
    assert!(dir.open_own_dir("real").is_ok());
}

#[test]
fn component__not_a_single_name__then_invalid_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Dir::open(tmp.path()).unwrap();
    for name in ["", ".", "..", "a/b", "/etc"] {
        let err = dir.create_file(name, PRIVATE_FILE).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
    }
}

#[test]
fn private_dir_under_shared__fresh__then_sticky_shared_and_private_user_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("traces");
    let own = with_umask(0o022, || private_dir_under_shared(&shared, "me").unwrap());
    assert_eq!(mode(&shared), 0o1777);
    assert_eq!(mode(&shared.join("me")), 0o700);
    assert_eq!(own.path(), shared.join("me"));
    // Again: the same directory, reused.
    let again = private_dir_under_shared(&shared, "me").unwrap();
    assert_eq!(again.stat().unwrap().ino, own.stat().unwrap().ino);
}

#[test]
fn private_dir_under_shared__user_dir_too_open__then_narrowed_to_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("traces");
    std::fs::create_dir_all(shared.join("me")).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(shared.join("me"), std::fs::Permissions::from_mode(0o777)).unwrap();
    private_dir_under_shared(&shared, "me").unwrap();
    assert_eq!(mode(&shared.join("me")), 0o700);
}

#[test]
fn private_dir_under_shared__shared_is_a_link__then_refused_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("real")).unwrap();
    symlink(tmp.path().join("real"), tmp.path().join("traces")).unwrap();
    let err = private_dir_under_shared(&tmp.path().join("traces"), "me").unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("real")).unwrap().count(),
        0
    );
}

#[test]
fn private_dir_under_shared__world_writable_not_sticky__then_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("traces");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = private_dir_under_shared(&shared, "me").unwrap_err();
    assert!(matches!(err, Error::Untrusted { mode: 0o777, .. }), "{err}");
    assert!(err.to_string().contains("chmod +t"), "{err}");
    assert!(!err.to_string().contains('\n'));
    assert!(!shared.join("me").exists());
    // Made sticky, it is accepted.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    private_dir_under_shared(&shared, "me").unwrap();
}

#[test]
fn private_dir_under_shared__user_dir_is_a_link__then_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("traces");
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
    symlink(tmp.path().join("elsewhere"), shared.join("me")).unwrap();
    let err = private_dir_under_shared(&shared, "me").unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
}

#[test]
fn user_dir_name__then_a_single_file_name() {
    let name = user_dir_name();
    assert!(component(&name).is_ok(), "{name}");
}
