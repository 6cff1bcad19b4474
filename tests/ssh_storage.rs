//! A host's storage over SSH (`SshStorage`) against a real sshd: a dropbear
//! on loopback whose root login reads an authorized_keys of the test's own
//! (a home bind-mounted over /root in a mount namespace of its own, so the
//! machine's is untouched). Every storage operation, and shipping between
//! it and the controller's own storage, including a link cut mid-ship.
//! Needs root, dropbear-bin and qemu-utils (scripts/install-deps.sh).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envclone::catalog::ImageFormat;
use envclone::guest::{SshOptions, SshTarget};
use envclone::host::remote::{SshShell, SshStorage};
use envclone::host::ship::{self, End, ShipError};
use envclone::host::{LocalStorage, Storage, StorageError};

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A dropbear on 127.0.0.1 taking the test's key for root.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        run("dropbearkey", &["-t", "ed25519", "-f", p("host.dropbear").to_str().unwrap()]);
        run("dropbearkey", &["-t", "ed25519", "-f", p("client.dropbear").to_str().unwrap()]);
        run(
            "dropbearconvert",
            &["dropbear", "openssh", p("client.dropbear").to_str().unwrap(), p("client").to_str().unwrap()],
        );
        let public = |key: &str| {
            run("dropbearkey", &["-y", "-f", p(key).to_str().unwrap()])
                .lines()
                .find(|l| l.starts_with("ssh-ed25519 "))
                .unwrap()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        std::fs::create_dir_all(p("home/.ssh")).unwrap();
        std::fs::write(p("home/.ssh/authorized_keys"), format!("{}\n", public("client.dropbear"))).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(p("known_hosts"), format!("[127.0.0.1]:{port} {}\n", public("host.dropbear"))).unwrap();
        let mut sshd = Sshd { dir, port, child: None };
        sshd.listen();
        sshd
    }

    fn listen(&mut self) {
        let p = |name: &str| self.dir.path().join(name).to_str().unwrap().to_owned();
        let script = format!(
            "mount --bind {} /root && exec dropbear -F -E -s -W 4194304 -r {} -p 127.0.0.1:{}",
            p("home"),
            p("host.dropbear"),
            self.port
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec", &script])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dropbear did not listen on {}", self.port);
    }

    /// The server and every session it forked die: a cut link.
    fn cut(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn storage(&self) -> SshStorage {
        let target = SshTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            netns: None,
            host_key_alias: None,
        };
        let options = SshOptions {
            key: self.dir.path().join("client"),
            known_hosts: self.dir.path().join("known_hosts"),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(20),
        };
        SshStorage::new(Arc::new(SshShell::new("far", target, options)), Duration::from_secs(20))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.cut();
    }
}

fn qemu_io_write(image: &Path, offset: &str, byte: &str) {
    run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P {byte} {offset} 256k"), image.to_str().unwrap()]);
}

fn end<'a>(host: &'a str, storage: &'a dyn Storage, path: &'a Path) -> End<'a> {
    End { host, storage, path }
}

#[test]
fn every_storage_operation_works_over_ssh_as_it_does_locally() {
    let sshd = Sshd::start();
    let far = sshd.storage();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("far");
    let path = |name: &str| root.join(name);

    far.create_dir(&path("images")).unwrap();
    // Ranges written and read back, a file's length set, its extents and checksum.
    let small = path("images/small");
    let mut writer = far.write_range(&small, 0).unwrap();
    writer.write_all(&[1u8; 4096]).unwrap();
    writer.finish().unwrap();
    far.finish_file(&small, 8192).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut far.read_range(&small, 0, 8192).unwrap(), &mut bytes).unwrap();
    assert_eq!(bytes, [[1u8; 4096], [0u8; 4096]].concat());
    assert_eq!(far.data_extents(&small).unwrap()[0].offset, 0);
    assert_eq!(far.sha256(&small).unwrap(), LocalStorage.sha256(&small).unwrap());
    far.install(&small, &path("images/small2")).unwrap();
    assert!(!far.exists(&small).unwrap());
    far.remove(&path("images/small2")).unwrap();
    assert!(far.exists(&path("images")).unwrap());
    assert!(!far.exists(&path("none")).unwrap());
    assert!(far.free_space(&root).unwrap() > 0);

    let base = path("images/base.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
    qemu_io_write(&base, "0", "0x11");
    let top = path("images/o 1.qcow2");
    far.create_overlay(&top, &base, ImageFormat::Qcow2).unwrap();
    assert!(matches!(far.create_overlay(&top, &base, ImageFormat::Qcow2), Err(StorageError::Exists { .. })));
    qemu_io_write(&top, "4M", "0x22");
    assert_eq!(far.backing_chain(&top).unwrap(), [top.clone(), base.clone()]);
    assert_eq!(far.check(&top).unwrap(), Vec::<String>::new());

    let flat = path("flat/flat.qcow2");
    assert!(far.copy_full(&top, &flat, &|_| {}).unwrap() > 0);
    assert!(far.same_content(&top, &flat).unwrap());
    assert!(!far.same_content(&base, &flat).unwrap());

    let copy = path("copy.qcow2");
    let copied = far.copy_file(&top, &copy).unwrap();
    assert_eq!(copied.sha256, LocalStorage.sha256(&top).unwrap());
    assert_eq!(far.sha256(&copy).unwrap(), copied.sha256);
    assert_eq!(copied.bytes, far.size(&copy).unwrap());
    assert!(matches!(far.copy_file(&top, &copy), Err(StorageError::Exists { .. })));
    let stamp = far.stamp(&copy).unwrap();
    assert_eq!(stamp, LocalStorage.stamp(&copy).unwrap());

    let merged = path("merged.qcow2");
    far.copy_full(&base, &merged, &|_| {}).unwrap();
    far.merge(&copy, &merged).unwrap();
    assert!(far.same_content(&top, &merged).unwrap());

    let moved = path("images/moved.qcow2");
    far.install(&flat, &moved).unwrap();
    assert!(!far.exists(&flat).unwrap() && far.exists(&moved).unwrap());
    let mut listed = far.list_dir(&path("images")).unwrap();
    listed.sort();
    assert_eq!(listed, [base.clone(), moved.clone(), top.clone()]);
    assert!(far.list_dir(&path("none")).unwrap().is_empty());
    far.remove_dir_if_empty(&path("images"));
    assert!(far.exists(&path("images")).unwrap(), "a directory with files stays");
    far.remove_dir_if_empty(&path("flat"));
    assert!(!far.exists(&path("flat")).unwrap());
    far.remove(&moved).unwrap();
    far.remove(&moved).unwrap();
    assert!(!far.exists(&moved).unwrap());

    far.set_backing(&top, &merged, ImageFormat::Qcow2).unwrap();
    assert_eq!(far.backing_chain(&top).unwrap()[1], merged);
    far.pull(&top, None).unwrap();
    assert_eq!(far.backing_chain(&top).unwrap(), std::slice::from_ref(&top));
}

#[test]
fn images_ship_both_ways_sparse_and_verified_and_a_cut_link_leaves_nothing_used() {
    let mut sshd = Sshd::start();
    let far = sshd.storage();
    let work = tempfile::tempdir().unwrap();
    let here = work.path().join("here");
    let there = work.path().join("there");

    // A 64 MiB qcow2 with two 256 KiB runs of data: most of the file is a hole.
    let image = here.join("disk.qcow2");
    std::fs::create_dir_all(&here).unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", image.to_str().unwrap(), "64M"]);
    qemu_io_write(&image, "0", "0x33");
    qemu_io_write(&image, "40M", "0x44");

    let shipped_there = there.join("sb/disk.qcow2");
    let shipped =
        ship::ship(end("local", &LocalStorage, &image), end("far", &far, &shipped_there), None, &|_, _| {}).unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), std::fs::read(&shipped_there).unwrap());
    assert!(shipped.bytes < 8 << 20, "only data crosses: {shipped:?}");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&shipped_there).unwrap()) * 512;
    assert!(allocated < 8 << 20, "holes stay holes on arrival: {allocated}");

    let back = here.join("back.qcow2");
    ship::ship(end("far", &far, &shipped_there), end("local", &LocalStorage, &back), None, &|_, _| {}).unwrap();
    assert!(LocalStorage.same_content(&image, &back).unwrap());

    // A dense 24 MiB file, cut after its first megabyte.
    let dense = here.join("dense.raw");
    let mut file = std::fs::File::create(&dense).unwrap();
    for i in 0..24u8 {
        file.write_all(&vec![i + 1; 1 << 20]).unwrap();
    }
    drop(file);
    let target = there.join("sb/dense.raw");
    let cut = AtomicBool::new(false);
    let sshd_cell = std::sync::Mutex::new(&mut sshd);
    let error = ship::ship(end("local", &LocalStorage, &dense), end("far", &far, &target), None, &|done, _| {
        if done > 0 && !cut.swap(true, Ordering::SeqCst) {
            sshd_cell.lock().unwrap().cut();
        }
    })
    .unwrap_err();
    assert!(matches!(&error, ShipError::Write { host, .. } if host == "far"), "{error:?}");
    assert!(!target.exists(), "a half-shipped file is never installed");

    let sshd = sshd_cell.into_inner().unwrap();
    sshd.listen();
    let shipped = ship::ship(end("local", &LocalStorage, &dense), end("far", &far, &target), None, &|_, _| {}).unwrap();
    assert_eq!(shipped.bytes, 24 << 20);
    assert_eq!(std::fs::read(&dense).unwrap(), std::fs::read(&target).unwrap());
    assert!(!ship::part_path(&target).exists());
}

#[test]
fn an_unknown_host_key_is_refused() {
    let sshd = Sshd::start();
    std::fs::write(sshd.dir.path().join("known_hosts"), "").unwrap();
    let error = sshd.storage().exists(Path::new("/")).unwrap_err();
    let text = envclone::error::chain(&error);
    assert!(text.contains("known_hosts") || text.contains("host key"), "{text}");
    let _: PathBuf = sshd.dir.path().to_owned();
}
