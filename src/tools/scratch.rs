//! Private scratch directories for the tools that need one (the demo's
//! embedded rules, a scenario's subset of rules, the benchmark's state):
//! a random name nobody can create first, and mode 0700 so nobody else can
//! read or change what the engine then loads from it.

/// A fresh directory under the system's temp dir, readable and writable by
/// this user alone; deleted when the returned guard is dropped.
pub(crate) fn private_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o700));
    }
    b.tempdir()
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_directory_is_private_and_its_name_unguessable() {
        let a = super::private_dir("skyrules-test-").unwrap();
        let b = super::private_dir("skyrules-test-").unwrap();
        assert_ne!(a.path(), b.path());
        for d in [&a, &b] {
            let mode = d.path().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.path().display());
            let name = d.path().file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains(&std::process::id().to_string()), "{name}");
        }
    }
}
