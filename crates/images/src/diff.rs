//! A container's changes to its image as an OCI layer (for checkpoint
//! archives): the active snapshot's overlay upper dir written as a tar
//! stream whose whiteouts are OCI's (`.wh.NAME` for a 0/0 character
//! device, `DIR/.wh..wh..opq` for an opaque directory). It is applied
//! back with [`crate::unpack_layer`] (hardened against hostile layers)
//! onto a new snapshot's upper dir, `Whiteouts::Overlay`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::ImageError;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn io(what: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::io(format!("read {}", what.display()), e)
}

fn opaque(dir: &Path) -> bool {
    xattr_get(dir, OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// The empty file that stands for a whiteout or an opaque directory.
fn marker() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes the upper dir `upper` as an OCI layer to `out`.
pub fn write_upper_as_layer<W: Write>(upper: &Path, out: W) -> Result<W, ImageError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    add_dir(&mut tar, upper, Path::new(""))?;
    tar.into_inner().map_err(io(upper))
}

fn add_dir<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<(), ImageError> {
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(io(dir))?.collect::<Result<_, _>>().map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = meta.file_type();
        // A socket is made again by whoever binds it (CRIU does, for the
        // restored processes): tar cannot hold one.
        if ft.is_socket() {
            continue;
        }
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout: OCI's `.wh.NAME`.
            let wh = rel.join(format!(".wh.{}", entry.file_name().to_string_lossy()));
            tar.append_data(&mut marker(), wh, std::io::empty()).map_err(io(&path))?;
            continue;
        }
        tar.append_path_with_name(&path, &name).map_err(io(&path))?;
        if ft.is_dir() {
            if opaque(&path) {
                tar.append_data(&mut marker(), name.join(".wh..wh..opq"), std::io::empty()).map_err(io(&path))?;
            }
            add_dir(tar, &path, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{UnpackOptions, Whiteouts, unpack_layer};

    #[test]
    fn an_upper_dir_round_trips_through_a_layer() {
        let src = tempfile::tempdir().unwrap();
        let upper = src.path();
        fs::create_dir_all(upper.join("tmp/deep")).unwrap();
        fs::write(upper.join("tmp/deep/count"), "42\n").unwrap();
        std::os::unix::fs::symlink("deep/count", upper.join("tmp/link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(upper.join("tmp/app.sock")).unwrap();
        // A deleted file of the image: an overlay whiteout.
        nix::sys::stat::mknod(&upper.join("gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .unwrap();
        let layer = write_upper_as_layer(upper, Vec::new()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack_layer(layer.as_slice(), dst.path(), &UnpackOptions::new(Whiteouts::Overlay)).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("tmp/deep/count")).unwrap(), "42\n");
        assert_eq!(fs::read_link(dst.path().join("tmp/link")).unwrap(), Path::new("deep/count"));
        let gone = fs::symlink_metadata(dst.path().join("gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0, "the whiteout comes back as one");
        assert!(!dst.path().join("tmp/app.sock").exists(), "sockets are left out");
    }
}
