//! The mount table's text (/proc/PID/mountinfo), parsed in one place for
//! every crate that reads it: cgroup hierarchies, overlay snapshots, which
//! mount a path is on and how that mount propagates. No I/O here: callers
//! read the file.

use std::borrow::Cow;
use std::path::Path;

/// One line of mountinfo, the fields berth reads, borrowed from the text
/// (a field is copied only when it has escapes to undo): a caller that
/// keeps one line of hundreds pays for that line alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    /// Where it is mounted.
    pub point: Cow<'a, str>,
    /// Its propagation tags (`shared:N`, `master:N`).
    pub tags: Vec<&'a str>,
    /// The filesystem type (`ext4`, `tmpfs`, …).
    pub fstype: &'a str,
    /// The mount source (`/dev/vda`, `tmpfs`, …).
    pub source: Cow<'a, str>,
    /// The filesystem's own options (`rw,memory`, `rw,favordynmods`, …),
    /// as listed: split them on `,`, then [`unescape`] a value.
    pub options: &'a str,
}

/// Every mount of mountinfo text, in the order listed (proc(5): `id parent
/// maj:min root mount-point opts [optional...] - fstype source
/// super-opts`); a line without a mount point is passed over.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> + '_ {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let point = unescape(fields.nth(4)?);
        fields.next(); // the mount's options
        // The optional fields, up to and with the separator.
        let tags: Vec<&str> = fields.by_ref().take_while(|f| *f != "-").collect();
        let (fstype, source, options) =
            (fields.next().unwrap_or_default(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        Some(Mount { point, tags, fstype, source: unescape(source), options })
    })
}

/// The mount `path` is on, from mountinfo text: the longest mount point
/// above it, the last one listed if several are stacked.
pub fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Option<Mount<'a>> {
    let mut best: Option<Mount> = None;
    for mount in mounts(mountinfo) {
        let longer = best.as_ref().is_none_or(|b| mount.point.len() >= b.point.len());
        if path.starts_with(mount.point.as_ref()) && longer {
            best = Some(mount);
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\054` for a
/// comma in an option's value, and so on).
pub fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
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
        let of = |p: &str| {
            let m = mount_of(HOST, Path::new(p)).unwrap();
            (m.point.into_owned(), m.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(of("/srv/data/x"), ("/srv/data".to_string(), vec!["master:7".to_string()]));
        assert_eq!(of("/srv/other"), ("/srv".to_string(), vec!["shared:4".to_string()]));
        assert_eq!(of("/srv/database"), ("/srv".to_string(), vec!["shared:4".to_string()]), "a prefix is not a parent");
        assert_eq!(of("/mnt/my dir/f"), ("/mnt/my dir".to_string(), vec!["shared:9".to_string()]));
        assert_eq!(of("/etc"), ("/".to_string(), vec![]));
    }

    #[test]
    fn the_filesystem_and_source_of_a_mount() {
        let of = |p: &str| {
            let m = mount_of(HOST, Path::new(p)).unwrap();
            (m.fstype.to_string(), m.source.into_owned())
        };
        assert_eq!(of("/etc"), ("ext4".to_string(), "/dev/sda1".to_string()));
        assert_eq!(of("/srv/data/x"), ("tmpfs".to_string(), "tmpfs".to_string()), "after the optional fields");
        assert_eq!(mount_of("1 2 0:1 / / rw -\n", Path::new("/")).unwrap().fstype, "", "a cut line");
        assert_eq!(mount_of(HOST, Path::new("/srv")).unwrap().options, "rw");
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/odd\\9"), "/odd\\9", "not an octal escape");
        assert_eq!(unescape("/end\\04"), "/end\\04", "cut short");
    }

    #[test]
    fn options_stay_escaped_until_split() {
        let text = "41 35 0:51 / /x rw - overlay over\\040lay rw,upperdir=/s/a\\054b,workdir=/w\n";
        let m = mounts(text).next().unwrap();
        assert_eq!(m.source, "over lay");
        let upper: Vec<String> = m
            .options
            .split(',')
            .filter_map(|o| o.strip_prefix("upperdir="))
            .map(|u| unescape(u).into_owned())
            .collect();
        assert_eq!(upper, ["/s/a,b"], "a comma inside a value is not a separator");
    }
}
