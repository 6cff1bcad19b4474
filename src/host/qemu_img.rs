//! The `qemu-img` command lines envclone runs on any host, and the readers
//! of what they print: one place, whether a host runs them itself
//! ([`super::LocalStorage`]) or over SSH (`super::remote`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::Extent;
use crate::catalog::ImageFormat;

fn args<'a>(parts: impl IntoIterator<Item = &'a OsStr>) -> Vec<OsString> {
    parts.into_iter().map(OsStr::to_os_string).collect()
}

/// `create`: a qcow2 overlay on `backing`.
pub fn create_overlay(overlay: &Path, backing: &Path, format: ImageFormat) -> Vec<OsString> {
    let fixed = ["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"].map(OsStr::new);
    args(fixed.into_iter().chain([backing.as_os_str(), overlay.as_os_str()]))
}

/// `info --backing-chain`, shared (-U): the image may be in use.
pub fn info_chain(path: &Path) -> Vec<OsString> {
    args(["info", "-U", "--backing-chain", "--output=json"].map(OsStr::new).into_iter().chain([path.as_os_str()]))
}

/// `rebase -u`: a new backing file, reading nothing.
pub fn set_backing(image: &Path, backing: &Path, format: ImageFormat) -> Vec<OsString> {
    let fixed = ["rebase", "-u", "-F", format.as_str(), "-b"].map(OsStr::new);
    args(fixed.into_iter().chain([backing.as_os_str(), image.as_os_str()]))
}

/// `rebase` (safe): `top` onto `backing`, copying what it stops reading.
pub fn pull(top: &Path, backing: Option<(&Path, ImageFormat)>) -> Vec<OsString> {
    let mut parts = args(["rebase", "-q", "-f", "qcow2"].map(OsStr::new));
    match backing {
        Some((path, format)) => {
            parts.extend(args(["-F", format.as_str(), "-b"].map(OsStr::new)));
            parts.push(path.as_os_str().to_owned());
        }
        None => parts.extend(args(["-b", ""].map(OsStr::new))),
    }
    parts.push(top.as_os_str().to_owned());
    parts
}

/// `commit -d`: the overlay keeps its data, so a merge interrupted half
/// way can run again.
pub fn commit(overlay: &Path) -> Vec<OsString> {
    args(["commit", "-q", "-d"].map(OsStr::new).into_iter().chain([overlay.as_os_str()]))
}

/// `compare`: exit 0 same, 1 different.
pub fn compare(a: &Path, b: &Path) -> Vec<OsString> {
    args(["compare", "-U", "-q"].map(OsStr::new).into_iter().chain([a.as_os_str(), b.as_os_str()]))
}

/// `check`: exit 0 clean, 2 corruptions, 3 leaks; each prints its report.
pub fn check(image: &Path) -> Vec<OsString> {
    args(["check", "-U", "--output=json"].map(OsStr::new).into_iter().chain([image.as_os_str()]))
}

/// `map` of the file itself (as raw): where its data and holes are.
pub fn map_file(path: &Path) -> Vec<OsString> {
    args(["map", "-U", "-f", "raw", "--output=json"].map(OsStr::new).into_iter().chain([path.as_os_str()]))
}

/// The `filename` of each entry of `qemu-img info --backing-chain --output=json`.
pub fn parse_chain(json: &[u8]) -> Result<Vec<PathBuf>, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let entries = value.as_array().ok_or("not a JSON array")?;
    entries
        .iter()
        .map(|entry| {
            entry
                .get("filename")
                .and_then(|f| f.as_str())
                .map(PathBuf::from)
                .ok_or_else(|| "an entry without a filename".to_owned())
        })
        .collect()
}

/// The problems `qemu-img check --output=json` reports: corruptions and
/// leaks, each as a line.
pub fn parse_check(json: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let count = |key: &str| value.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mut problems = Vec::new();
    for (key, what) in [("corruptions", "corruptions"), ("leaks", "leaked clusters"), ("check-errors", "check errors")]
    {
        let n = count(key);
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    Ok(problems)
}

/// The data ranges of `qemu-img map -f raw --output=json`.
pub fn parse_map(json: &[u8]) -> Result<Vec<Extent>, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let entries = value.as_array().ok_or("not a JSON array")?;
    let mut extents = Vec::new();
    for entry in entries {
        let number = |key: &str| entry.get(key).and_then(serde_json::Value::as_u64).ok_or(format!("no `{key}`"));
        if entry.get("data").and_then(serde_json::Value::as_bool).unwrap_or(true) {
            extents.push(Extent { offset: number("start")?, len: number("length")? });
        }
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_read_from_qemu_img_json() {
        let json = br#"[{"filename": "/a/top.qcow2"}, {"filename": "/a/base.raw"}]"#;
        assert_eq!(parse_chain(json).unwrap(), [PathBuf::from("/a/top.qcow2"), PathBuf::from("/a/base.raw")]);
        assert!(parse_chain(b"{}").is_err());
        assert!(parse_chain(br#"[{"format": "raw"}]"#).is_err());
    }

    #[test]
    fn a_check_report_lists_corruptions_and_leaks() {
        assert!(parse_check(br#"{"check-errors": 0, "filename": "x"}"#).unwrap().is_empty());
        assert_eq!(parse_check(br#"{"corruptions": 2, "leaks": 3}"#).unwrap(), ["2 corruptions", "3 leaked clusters"]);
    }

    #[test]
    fn a_map_keeps_the_data_and_leaves_out_the_holes() {
        let json = br#"[{ "start": 0, "length": 8388608, "zero": true, "data": false},
            { "start": 8388608, "length": 262144, "zero": false, "data": true}]"#;
        assert_eq!(parse_map(json).unwrap(), [Extent { offset: 8388608, len: 262144 }]);
        assert!(parse_map(br#"[{"data": true}]"#).is_err());
    }

    #[test]
    fn an_unreadable_backing_file_name_is_one_argument() {
        let line = pull(Path::new("/t o p"), None);
        assert_eq!(line.last().unwrap(), "/t o p");
        assert_eq!(line[line.len() - 2], "");
    }
}
