//! Files only the service account may read (mode 0600): key files, share
//! files, credentials and the principals file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` through a temporary file, an fsync and a
/// rename (then an fsync of the directory), so a crash leaves either the
/// old file or the new one, never half of either.
pub fn replace(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    // A stale temporary file, or a link someone put in its place, goes:
    // the file is created afresh, never opened through a link (review
    // finding: a planted link made this truncate its target).
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = open_new(tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `path` with `contents`; fails if it exists (never overwrites a
/// share or a key someone may still need).
pub fn create_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = open_new(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Opens an existing `path` for reading and writing, only if it is this
/// process's own private file: a regular file (not reached through a
/// symbolic link), owned by this user, with no permission for group or
/// others. A file someone else placed where a run resumes is refused, so
/// card data is never written into it (review finding).
pub fn open_own(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let no_follow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(no_follow)
        .open(path)?;
    let meta = file.metadata()?;
    let refused = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}; refusing to write to it", path.display()),
        ))
    };
    if !meta.file_type().is_file() {
        return refused("not a regular file");
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return refused("owned by another user");
    }
    if meta.mode() & 0o077 != 0 {
        return refused("readable or writable by others than its owner (mode is not 0600)");
    }
    Ok(file)
}

/// Opens `path` for writing, created with mode 0600; fails if it exists.
pub fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(create_new(&path, b"three").is_err());
        let fresh = dir.path().join("g");
        create_new(&fresh, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Review finding: a resumed export wrote PANs into a file someone else
    /// had planted at the output path (mode 0666, or a link to theirs).
    #[test]
    fn only_a_private_regular_file_of_ours_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        drop(open_new(&own).unwrap());
        assert!(open_own(&own).is_ok());
        let open_to_all = dir.path().join("open");
        std::fs::write(&open_to_all, b"").unwrap();
        std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(open_own(&open_to_all).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        assert!(open_own(&link).is_err());
        // replace() never writes through a link planted as its temporary.
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("f.tmp")).unwrap();
        replace(&dir.path().join("f"), b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
