//! The host's mount table, read for more than cgroups: which mount a path
//! is on and how that mount propagates.

use std::path::Path;

/// The mount point `path` is on and that mount's propagation tags
/// (`shared:N`, `master:N`), from mountinfo text: the longest mount point
/// above it, the last one listed if several are stacked.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, Vec<String>)> {
    let mut best: Option<(String, Vec<String>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| crate::unescape(p)) else { continue };
        let tags = fields.iter().skip(6).take_while(|f| **f != "-").map(|f| f.to_string()).collect();
        let longer = best.as_ref().is_none_or(|(b, _)| point.len() >= b.len());
        if path.starts_with(&point) && longer {
            best = Some((point, tags));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                        30 22 0:5 / /srv rw shared:4 - tmpfs tmpfs rw\n\
                        31 30 0:6 / /srv/data rw master:7 - tmpfs tmpfs rw\n\
                        32 22 0:7 / /mnt/my\\040dir rw shared:9 - tmpfs tmpfs rw\n";

    #[test]
    fn the_mount_of_a_path_and_its_propagation() {
        let of = |p: &str| mount_of(HOST, Path::new(p)).unwrap();
        assert_eq!(of("/srv/data/x"), ("/srv/data".to_string(), vec!["master:7".to_string()]));
        assert_eq!(of("/srv/other"), ("/srv".to_string(), vec!["shared:4".to_string()]));
        assert_eq!(of("/srv/database"), ("/srv".to_string(), vec!["shared:4".to_string()]), "a prefix is not a parent");
        assert_eq!(of("/mnt/my dir/f"), ("/mnt/my dir".to_string(), vec!["shared:9".to_string()]));
        assert_eq!(of("/etc"), ("/".to_string(), vec![]));
    }
}
