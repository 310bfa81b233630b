//! Files only the server's user may read: the data dir holds the database (with the
//! link-signing secret), the key-hash secret and every stored image.

use std::io::Write;
use std::path::Path;

/// Create `dir` (and its parents) and make it `0700`, also when it already existed.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    restrict(dir, 0o700)
}

/// Make an existing file `0600`.
pub fn restrict_file(path: &Path) -> std::io::Result<()> {
    restrict(path, 0o600)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Write `bytes` to a new `0600` file at `path`, whole or not at all: written beside it,
/// synced, then renamed into place.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// The secret in `path`, made (32 random bytes, hex) the first time; true when it was made now.
pub fn secret_file(path: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => Ok((text.trim().as_bytes().to_vec(), false)),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds no secret (it needs at least 32 characters)",
                path.display()
            ),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            write_file(path, secret.as_bytes())?;
            Ok((secret.into_bytes(), true))
        }
        Err(error) => Err(error),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let path = data.join("key-hash.secret");
        let (first, made) = secret_file(&path).unwrap();
        assert!(made && first.len() == 64);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(secret_file(&path).unwrap(), (first, false));
        std::fs::write(&path, "short").unwrap();
        let error = secret_file(&path).unwrap_err().to_string();
        assert!(error.contains("at least 32"), "{error}");
    }
}
