//! The default guest: where guests/build-default caches it, and how commands reach its init.

use std::path::PathBuf;

use crate::image::{self, ImageName};

/// Kernel command line of the default guest.
pub const DEFAULT_APPEND: &str = "console=ttyS0 quiet";

/// Added to the kernel command line of `popek run -- CMD` and of snapshots: a panicking kernel
/// reboots at once instead of hanging (Debian's kernel waits forever), and a run with CMD
/// stops on the reboot with the console's last lines.
pub const PANIC_REBOOTS: &str = "panic=-1";

/// Kernel command line of the Debian guest: the default guest's kernel and initramfs, with the
/// root file system on the first disk.
pub const DEBIAN_APPEND: &str = "console=ttyS0 root=/dev/vda rw";

/// The files of a prepared guest.
pub struct Guest {
    /// Kernel Image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// OpenSBI fw_dynamic.bin.
    pub firmware: PathBuf,
}

/// Where the default guest lives: `$POPEK_GUEST_DIR`, else `$XDG_CACHE_HOME/popek/guests/default`,
/// else `~/.cache/popek/guests/default` (the same rule as guests/build-default).
pub fn guest_dir() -> PathBuf {
    image::image_dir(ImageName::Default)
}

/// The Debian guest's disk image, built first if it is missing.
pub fn debian_disk() -> anyhow::Result<PathBuf> {
    Ok(image::ensure(ImageName::Debian)?.join("disk.img"))
}

/// The default guest, built first if it is missing.
pub fn default_guest() -> anyhow::Result<Guest> {
    let dir = image::ensure(ImageName::Default)?;
    Ok(Guest {
        kernel: dir.join("Image"),
        initrd: dir.join("initramfs.cpio.gz"),
        firmware: dir.join("fw_dynamic.bin"),
    })
}

/// The default guest's firmware, if it is built.
pub fn default_firmware() -> Option<PathBuf> {
    let f = guest_dir().join("fw_dynamic.bin");
    f.is_file().then_some(f)
}

/// The kernel command-line argument that makes the guest's init run `argv` instead of a shell:
/// `popek.cmd=` and the base64 of the shell-quoted words.
pub fn command_arg(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    format!("popek.cmd={}", base64(words.join(" ").as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn quotes_words() {
        let arg = command_arg(&["sh".into(), "-c".into(), "echo 'hi'".into()]);
        assert_eq!(
            arg,
            format!("popek.cmd={}", base64(br"'sh' '-c' 'echo '\''hi'\'''"))
        );
    }
}
