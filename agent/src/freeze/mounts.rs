//! Which filesystems a freeze covers, read from /proc/self/mountinfo.
//!
//! Selected: every writable local filesystem, once per superblock. Skipped:
//! pseudo filesystems (nothing on disk to make consistent, and most cannot
//! be frozen), network and FUSE filesystems (another host or a userspace
//! daemon holds the data; freezing one whose daemon lives on a frozen disk
//! would deadlock), read-only superblocks, and what `--exclude` names.
//! `--include` overrides the type rules for one mount point.
//!
//! Order: the freeze runs in REVERSE mount order and the thaw in mount order,
//! as qemu-ga does. A filesystem mounted later may live on one mounted
//! earlier (a loop-mounted image file under /var, say): freezing the later
//! one first lets it flush into its backing store while that store is still
//! writable, and thawing the backing store first lets the later one write
//! its superblock on thaw. The reverse order could deadlock on either step.

use std::collections::HashMap;

/// One line of /proc/self/mountinfo (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    /// Per-mount options (`rw`/`ro`, `nosuid`...).
    pub mount_options: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn dev(&self) -> libc::dev_t {
        libc::makedev(self.major, self.minor)
    }

    fn mount_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    fn super_read_only(&self) -> bool {
        self.super_options.iter().any(|o| o == "ro")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: &'static str,
}

/// Parses mountinfo text: `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |problem| ParseError { line: index + 1, problem };
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-").ok_or_else(|| fail("no `-` separator"))?;
        if separator < 6 || fields.len() < separator + 3 {
            return Err(fail("too few fields"));
        }
        let (major, minor) = fields[2].split_once(':').ok_or_else(|| fail("device is not major:minor"))?;
        entries.push(MountEntry {
            mount_id: fields[0].parse().map_err(|_| fail("mount id is not a number"))?,
            major: major.parse().map_err(|_| fail("major is not a number"))?,
            minor: minor.parse().map_err(|_| fail("minor is not a number"))?,
            mount_point: unescape(fields[4]),
            mount_options: fields[5].split(',').map(String::from).collect(),
            fstype: unescape(fields[separator + 1]),
            source: unescape(fields[separator + 2]),
            super_options: fields
                .get(separator + 3)
                .map(|o| o.split(',').map(String::from).collect())
                .unwrap_or_default(),
        });
    }
    Ok(entries)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Nothing on a disk behind them (or a read-only image): never frozen.
const PSEUDO: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "cramfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "romfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "zonefs",
];

/// Data held by another host or a userspace daemon.
const NETWORK: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "coda",
    "davfs",
    "fuse",
    "fuseblk",
    "glusterfs",
    "lustre",
    "ncpfs",
    "nfs",
    "nfs4",
    "orangefs",
    "smb3",
    "smbfs",
    "vboxsf",
    "virtiofs",
    "vmhgfs",
];

/// Why a mount is not in the freeze set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Pseudo,
    Network,
    ReadOnly,
    Excluded,
    /// Its superblock is frozen through the mount point named.
    SameFilesystem(String),
    /// A later mount sits on the same mount point and hides it.
    Shadowed,
}

fn type_skip(fstype: &str) -> Option<Skip> {
    if PSEUDO.contains(&fstype) {
        Some(Skip::Pseudo)
    } else if NETWORK.contains(&fstype) || fstype.starts_with("fuse.") || fstype.starts_with("nfs") {
        Some(Skip::Network)
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// In freeze order (reverse mount order).
    pub freeze: Vec<MountEntry>,
    pub skipped: Vec<(MountEntry, Skip)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mount_point} is not a mount point")]
pub struct NotMounted {
    pub mount_point: String,
}

/// The set to freeze. `include` and `exclude` are normalized mount points;
/// an `include` that is not mounted is refused, an `exclude` that is not
/// mounted is ignored (one controller config serves guests with and
/// without, say, /boot/efi).
pub fn select(mounts: &[MountEntry], include: &[String], exclude: &[String]) -> Result<Selection, NotMounted> {
    if let Some(missing) = include.iter().find(|m| !mounts.iter().any(|e| &e.mount_point == *m)) {
        return Err(NotMounted { mount_point: missing.clone() });
    }
    let mut skipped = Vec::new();
    let mut chosen: Vec<MountEntry> = Vec::new();
    // Superblock key -> mount point it is frozen through.
    let mut seen: HashMap<SuperKey, String> = HashMap::new();
    for (index, entry) in mounts.iter().enumerate() {
        let shadowed = mounts[index + 1..].iter().any(|later| later.mount_point == entry.mount_point);
        let included = include.contains(&entry.mount_point);
        let skip = if exclude.contains(&entry.mount_point) {
            Some(Skip::Excluded)
        } else if let Some(skip) = type_skip(&entry.fstype).filter(|_| !included) {
            Some(skip)
        } else if shadowed {
            Some(Skip::Shadowed)
        } else if entry.super_read_only() || entry.mount_read_only() {
            // A read-only bind of a writable superblock is frozen through
            // a writable mount of it, if there is one.
            Some(Skip::ReadOnly)
        } else {
            super_keys(entry).iter().find_map(|key| seen.get(key)).map(|first| Skip::SameFilesystem(first.clone()))
        };
        match skip {
            Some(skip) => skipped.push((entry.clone(), skip)),
            None => {
                for key in super_keys(entry) {
                    seen.entry(key).or_insert_with(|| entry.mount_point.clone());
                }
                chosen.push(entry.clone());
            }
        }
    }
    chosen.reverse();
    Ok(Selection { freeze: chosen, skipped })
}

/// Every local filesystem, once per superblock, in thaw order (mount
/// order), whatever its mode: what `thaw` sweeps. FITHAW on a filesystem
/// that is not frozen fails with EINVAL and changes nothing.
pub fn thaw_candidates(mounts: &[MountEntry]) -> Vec<MountEntry> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (index, entry) in mounts.iter().enumerate() {
        let shadowed = mounts[index + 1..].iter().any(|later| later.mount_point == entry.mount_point);
        if shadowed || type_skip(&entry.fstype).is_some() {
            continue;
        }
        let keys = super_keys(entry);
        if keys.iter().any(|k| seen.contains(k)) {
            continue;
        }
        seen.extend(keys);
        out.push(entry.clone());
    }
    out
}

/// What identifies a superblock: its device number, and for a block
/// device source also (type, device), since btrfs gives each subvolume its
/// own anonymous device number while they share one superblock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SuperKey {
    Dev(u32, u32),
    Block(String, String),
}

fn super_keys(entry: &MountEntry) -> Vec<SuperKey> {
    let mut keys = vec![SuperKey::Dev(entry.major, entry.minor)];
    if entry.source.starts_with("/dev/") {
        keys.push(SuperKey::Block(entry.fstype.clone(), entry.source.clone()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest with the usual pseudo filesystems, /var on its own disk bound
    /// again at /srv/var, a read-only /boot, NFS and sshfs homes, a tmpfs
    /// /run, two btrfs subvolumes, a read-only bind of /data and a /mnt
    /// mounted twice.
    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=10240k,nr_inodes=121
26 25 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
27 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=100k,mode=755
28 24 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
30 22 254:17 / /var rw,relatime shared:20 - xfs /dev/vdb1 rw,attr2,inode64
31 22 254:2 / /boot ro,relatime shared:21 - ext4 /dev/vda2 ro
32 22 0:40 / /home rw,relatime shared:22 - nfs4 srv:/home rw,vers=4.2
33 22 0:41 / /mnt/remote rw,nosuid,nodev,relatime shared:23 - fuse.sshfs me@h:/ rw,user_id=0
34 22 254:17 /lib /srv/var rw,relatime shared:20 - xfs /dev/vdb1 rw,attr2,inode64
35 22 0:42 / /data rw,relatime shared:24 - btrfs /dev/vdc rw,subvol=/data
36 22 0:43 / /data/snap rw,relatime shared:25 - btrfs /dev/vdc rw,subvol=/snap
37 22 0:42 / /export/data ro,relatime shared:24 - btrfs /dev/vdc rw,subvol=/data
38 22 254:33 / /mnt rw,relatime shared:26 - ext4 /dev/vdd rw
39 22 254:49 / /mnt rw,relatime shared:27 - ext4 /dev/vde rw
40 22 254:65 / /with\\040space rw,relatime shared:28 - ext4 /dev/vdf rw
";

    fn points(entries: &[MountEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.mount_point.as_str()).collect()
    }

    fn skip_of<'a>(selection: &'a Selection, mount_point: &str) -> Vec<&'a Skip> {
        selection.skipped.iter().filter(|(e, _)| e.mount_point == mount_point).map(|(_, s)| s).collect()
    }

    #[test]
    fn parses_fields_and_unescapes_octal() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(entries.len(), 18);
        let root = &entries[0];
        assert_eq!((root.mount_id, root.major, root.minor), (22, 254, 1));
        assert_eq!((root.fstype.as_str(), root.source.as_str()), ("ext4", "/dev/vda1"));
        assert_eq!(root.super_options, ["rw", "errors=remount-ro"]);
        assert_eq!(entries[17].mount_point, "/with space");
        assert_eq!(unescape(r"a\134b\011c\012"), "a\\b\tc\n");
        assert_eq!(unescape(r"\04"), r"\04");
    }

    #[test]
    fn parses_lines_without_optional_fields() {
        let entries = parse_mountinfo("15 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
        assert_eq!(entries[0].mount_options, ["rw"]);
        assert_eq!(entries[0].source, "/dev/sda1");
    }

    #[test]
    fn parse_refuses_malformed_lines() {
        for (text, problem) in [
            ("22 1 254:1 / / rw shared:1 ext4 /dev/vda1 rw", "no `-` separator"),
            ("22 1 254:1 / - ext4 /dev/vda1 rw", "too few fields"),
            ("22 1 254:1 / / rw - ext4", "too few fields"),
            ("22 1 2541 / / rw - ext4 /dev/vda1 rw", "device is not major:minor"),
            ("x 1 254:1 / / rw - ext4 /dev/vda1 rw", "mount id is not a number"),
        ] {
            assert_eq!(
                parse_mountinfo(&format!("15 1 8:1 / / rw - ext4 /dev/sda1 rw\n{text}\n")).unwrap_err(),
                ParseError { line: 2, problem },
                "{text}"
            );
        }
    }

    #[test]
    fn selects_writable_local_filesystems_once_each_in_reverse_mount_order() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        let selection = select(&entries, &[], &[]).unwrap();
        assert_eq!(points(&selection.freeze), ["/with space", "/mnt", "/data", "/var", "/"]);
        for (mount, skip) in [
            ("/proc", Skip::Pseudo),
            ("/dev", Skip::Pseudo),
            ("/run", Skip::Pseudo),
            ("/sys/fs/cgroup", Skip::Pseudo),
            ("/home", Skip::Network),
            ("/mnt/remote", Skip::Network),
            ("/boot", Skip::ReadOnly),
            ("/export/data", Skip::ReadOnly),
            ("/srv/var", Skip::SameFilesystem("/var".into())),
        ] {
            assert_eq!(skip_of(&selection, mount), [&skip], "{mount}");
        }
    }

    #[test]
    fn btrfs_subvolumes_of_one_device_count_once() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        let selection = select(&entries, &[], &[]).unwrap();
        // /data/snap has a device number of its own but shares /data's
        // superblock: FIFREEZE on it would fail with EBUSY.
        assert_eq!(skip_of(&selection, "/data/snap"), [&Skip::SameFilesystem("/data".into())]);
    }

    #[test]
    fn a_mount_point_mounted_twice_is_frozen_through_the_visible_mount() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        let selection = select(&entries, &[], &[]).unwrap();
        let mnt: Vec<_> = selection.freeze.iter().filter(|e| e.mount_point == "/mnt").collect();
        assert_eq!(mnt.len(), 1);
        assert_eq!(mnt[0].source, "/dev/vde");
        assert_eq!(skip_of(&selection, "/mnt"), [&Skip::Shadowed]);
    }

    #[test]
    fn exclude_drops_and_include_overrides_type_rules() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        let selection = select(&entries, &["/mnt/remote".into()], &["/var".into(), "/not/mounted".into()]).unwrap();
        assert_eq!(points(&selection.freeze), ["/with space", "/mnt", "/data", "/srv/var", "/mnt/remote", "/"]);
        assert_eq!(skip_of(&selection, "/var"), [&Skip::Excluded]);
    }

    #[test]
    fn include_of_something_not_mounted_is_refused() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        let err = select(&entries, &["/nope".into()], &[]).unwrap_err();
        assert_eq!(err.mount_point, "/nope");
    }

    #[test]
    fn thaw_sweeps_every_local_filesystem_in_mount_order() {
        let entries = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(points(&thaw_candidates(&entries)), ["/", "/var", "/boot", "/data", "/mnt", "/with space"]);
    }

    proptest::proptest! {
        #[test]
        fn parse_mountinfo_never_panics(text in "[ -~\n]{0,300}") {
            let _ = parse_mountinfo(&text);
        }

        #[test]
        fn unescape_inverts_mountinfo_escaping(path in "/[ -~\t\n]{0,40}") {
            let escaped: String = path.chars().map(|c| match c {
                ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                c => c.to_string(),
            }).collect();
            proptest::prop_assert_eq!(unescape(&escaped), path);
        }

        #[test]
        fn selection_freezes_each_superblock_at_most_once(devs in proptest::collection::vec((0u32..4, 0u32..3, proptest::bool::ANY), 0..12)) {
            let text: String = devs.iter().enumerate().map(|(i, (major, minor, ro))| {
                format!("{} 1 {major}:{minor} / /m{i} {} - ext4 /dev/x{major}{minor} rw\n", i + 10, if *ro { "ro" } else { "rw" })
            }).collect();
            let selection = select(&parse_mountinfo(&text).unwrap(), &[], &[]).unwrap();
            let mut seen = std::collections::HashSet::new();
            for entry in &selection.freeze {
                proptest::prop_assert!(seen.insert((entry.major, entry.minor)), "{:?}", selection.freeze);
                proptest::prop_assert!(!entry.mount_read_only());
            }
            proptest::prop_assert_eq!(selection.freeze.len() + selection.skipped.len(), devs.len());
        }
    }

    #[test]
    fn lab_guest_freezes_only_its_root() {
        let text = "\
17 1 254:0 / / rw,relatime - ext4 /dev/vda rw
18 17 0:4 / /proc rw,relatime - proc proc rw
19 17 0:17 / /sys rw,relatime - sysfs sys rw
20 17 0:5 / /dev rw,relatime - devtmpfs dev rw,size=115536k,nr_inodes=28884,mode=755
21 20 0:18 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
22 17 0:19 / /run rw,relatime - tmpfs tmpfs rw,mode=755
23 17 0:20 / /tmp rw,relatime - tmpfs tmpfs rw
";
        let selection = select(&parse_mountinfo(text).unwrap(), &[], &[]).unwrap();
        assert_eq!(points(&selection.freeze), ["/"]);
    }
}
