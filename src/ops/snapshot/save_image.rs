//! libvirt's save-image layout (what `virsh save` writes and `virsh
//! restore` reads), written and read by hand: no crate does it.
//!
//! ```text
//! offset 0   magic "LibvirtQemudSave" (16 bytes; "LibvirtQemudPart" while unfinished)
//!        16  u32 version (2), u32 data_len, u32 was_running, u32 compressed,
//!            u32 cookie_offset, 14 x u32 unused          (all little-endian here)
//!        92  data_len bytes: the domain XML, NUL-terminated; at cookie_offset
//!            (relative to byte 92) a cookie XML, NUL-terminated; zeros to the end
//! 92 + data_len   QEMU's migration stream
//! ```
//!
//! libvirt writes the header in the host's byte order and leaves 64 KiB of
//! zeros after the XML so that it can be edited in place (`virsh
//! save-image-edit`); a reader that finds a version it does not know with
//! the bytes swapped reads it big-endian. Version 1 has no cookie.
//! `compressed` 0 means a raw stream; other values name a compressor this
//! module does not handle.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// What libvirt writes first and replaces by [`MAGIC`] once the image is complete.
pub const PARTIAL_MAGIC: &[u8; 16] = b"LibvirtQemudPart";
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 92;
/// Zeros left after the XML (and cookie) for later in-place edits, as libvirt does.
pub const XML_ROOM: usize = 64 * 1024;
/// Refuse absurd `data_len`s before allocating for them.
const MAX_DATA_LEN: u32 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveImageError {
    #[error("{what} is {got} bytes long, {needed} needed")]
    TooShort { what: &'static str, needed: u64, got: u64 },
    #[error("not a libvirt save image (magic {found:?})")]
    BadMagic { found: String },
    #[error("the save image was never finished (magic LibvirtQemudPart)")]
    Partial,
    #[error("save image version {version} is not known")]
    UnknownVersion { version: u32 },
    #[error("save image data length {data_len} is implausible")]
    DataLen { data_len: u32 },
    #[error("the domain XML is not NUL-terminated within the data section")]
    XmlNotTerminated,
    #[error("the cookie offset {offset} lies outside the data section of {data_len} bytes")]
    CookieOutOfRange { offset: u32, data_len: u32 },
    #[error("the {what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("the {what} contains a NUL byte")]
    HasNul { what: &'static str },
    #[error("the new XML and cookie need {needed} bytes, the image has room for {room}")]
    NoRoom { needed: u64, room: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the save image {}", path.display())]
pub struct ReadSaveImageError {
    pub path: PathBuf,
    #[source]
    pub source: ReadCause,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadCause {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Format(#[from] SaveImageError),
}

/// The fixed 92-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveHeader {
    pub version: u32,
    pub data_len: u32,
    pub was_running: bool,
    pub compressed: u32,
    pub cookie_offset: u32,
}

impl SaveHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..16].copy_from_slice(MAGIC);
        let fields = [self.version, self.data_len, u32::from(self.was_running), self.compressed, self.cookie_offset];
        for (index, value) in fields.iter().enumerate() {
            bytes[16 + 4 * index..20 + 4 * index].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    pub fn parse(bytes: &[u8]) -> Result<SaveHeader, SaveImageError> {
        if bytes.len() < HEADER_LEN {
            return Err(SaveImageError::TooShort {
                what: "the header",
                needed: HEADER_LEN as u64,
                got: bytes.len() as u64,
            });
        }
        match &bytes[..16] {
            magic if magic == MAGIC => {}
            magic if magic == PARTIAL_MAGIC => return Err(SaveImageError::Partial),
            magic => return Err(SaveImageError::BadMagic { found: String::from_utf8_lossy(magic).into_owned() }),
        }
        let field = |index: usize, big: bool| {
            // In bounds: the header's length was checked above.
            let at = 16 + 4 * index;
            let raw = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            if big {
                u32::from_be_bytes(raw)
            } else {
                u32::from_le_bytes(raw)
            }
        };
        let known = |version: u32| version == 1 || version == VERSION;
        let big = match field(0, false) {
            version if known(version) => false,
            version if known(version.swap_bytes()) => true,
            version => return Err(SaveImageError::UnknownVersion { version }),
        };
        let header = SaveHeader {
            version: field(0, big),
            data_len: field(1, big),
            was_running: field(2, big) != 0,
            compressed: field(3, big),
            cookie_offset: if field(0, big) >= 2 { field(4, big) } else { 0 },
        };
        if header.data_len > MAX_DATA_LEN {
            return Err(SaveImageError::DataLen { data_len: header.data_len });
        }
        Ok(header)
    }
}

/// Everything before the migration stream: header, domain XML, cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavePrefix {
    pub header: SaveHeader,
    pub xml: String,
    pub cookie: Option<String>,
}

impl SavePrefix {
    /// A prefix for a raw (uncompressed) stream, with libvirt's 64 KiB of
    /// room after the XML.
    pub fn new(xml: &str, cookie: Option<&str>, was_running: bool) -> Result<SavePrefix, SaveImageError> {
        let needed = texts_len(xml, cookie)?;
        let data_len = u32::try_from(needed + XML_ROOM as u64)
            .ok()
            .filter(|len| *len <= MAX_DATA_LEN)
            .ok_or(SaveImageError::NoRoom { needed, room: u64::from(MAX_DATA_LEN) })?;
        let cookie_offset = if cookie.is_some() { xml.len() as u32 + 1 } else { 0 };
        Ok(SavePrefix {
            header: SaveHeader { version: VERSION, data_len, was_running, compressed: 0, cookie_offset },
            xml: xml.to_owned(),
            cookie: cookie.map(str::to_owned),
        })
    }

    /// Where the migration stream starts.
    pub fn stream_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.header.data_len)
    }

    /// Header and data section, exactly `stream_offset()` bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SaveImageError> {
        let needed = texts_len(&self.xml, self.cookie.as_deref())?;
        let data_len = u64::from(self.header.data_len);
        if needed > data_len {
            return Err(SaveImageError::NoRoom { needed, room: data_len });
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.header.data_len as usize);
        bytes.extend_from_slice(&self.header.encode());
        bytes.extend_from_slice(self.xml.as_bytes());
        bytes.push(0);
        if let Some(cookie) = &self.cookie {
            // libvirt puts the cookie right after the XML; keep any other
            // offset a parsed image had.
            let at = HEADER_LEN + self.header.cookie_offset as usize;
            bytes.resize(at.max(bytes.len()), 0);
            bytes.extend_from_slice(cookie.as_bytes());
            bytes.push(0);
        }
        bytes.resize(HEADER_LEN + self.header.data_len as usize, 0);
        Ok(bytes)
    }

    /// Reads a prefix from `bytes` (at least `stream_offset()` of them).
    pub fn parse(bytes: &[u8]) -> Result<SavePrefix, SaveImageError> {
        let header = SaveHeader::parse(bytes)?;
        let end = HEADER_LEN + header.data_len as usize;
        if bytes.len() < end {
            return Err(SaveImageError::TooShort {
                what: "the data section",
                needed: end as u64,
                got: bytes.len() as u64,
            });
        }
        Self::from_parts(header, &bytes[HEADER_LEN..end])
    }

    /// Reads the prefix of the save image at `path`.
    pub fn read(path: &Path) -> Result<SavePrefix, ReadSaveImageError> {
        let fail = |source: ReadCause| ReadSaveImageError { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(|e| fail(e.into()))?;
        let mut head = [0u8; HEADER_LEN];
        read_exact(&mut file, &mut head, "the header").map_err(fail)?;
        let header = SaveHeader::parse(&head).map_err(|e| fail(e.into()))?;
        let mut data = vec![0u8; header.data_len as usize];
        read_exact(&mut file, &mut data, "the data section").map_err(fail)?;
        Self::from_parts(header, &data).map_err(|e| fail(e.into()))
    }

    /// The same image with another domain XML, in the same `data_len` so
    /// that the stream does not move (the cookie moves right after the XML).
    pub fn with_xml(&self, xml: &str) -> Result<SavePrefix, SaveImageError> {
        let needed = texts_len(xml, self.cookie.as_deref())?;
        let room = u64::from(self.header.data_len);
        if needed > room {
            return Err(SaveImageError::NoRoom { needed, room });
        }
        let cookie_offset = if self.cookie.is_some() && self.header.version >= 2 { xml.len() as u32 + 1 } else { 0 };
        Ok(SavePrefix {
            header: SaveHeader { cookie_offset, ..self.header },
            xml: xml.to_owned(),
            cookie: self.cookie.clone(),
        })
    }

    fn from_parts(header: SaveHeader, data: &[u8]) -> Result<SavePrefix, SaveImageError> {
        let xml_end = data.iter().position(|b| *b == 0).ok_or(SaveImageError::XmlNotTerminated)?;
        let xml = std::str::from_utf8(&data[..xml_end]).map_err(|_| SaveImageError::NotUtf8 { what: "domain XML" })?;
        let cookie = match header.cookie_offset {
            0 => None,
            offset if offset as usize >= data.len() || (offset as usize) < xml_end + 1 => {
                return Err(SaveImageError::CookieOutOfRange { offset, data_len: header.data_len })
            }
            offset => {
                let rest = &data[offset as usize..];
                let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                let text = std::str::from_utf8(&rest[..end]).map_err(|_| SaveImageError::NotUtf8 { what: "cookie" })?;
                Some(text.to_owned())
            }
        };
        Ok(SavePrefix { header, xml: xml.to_owned(), cookie })
    }
}

/// Bytes the XML and the cookie take, each with its NUL.
fn texts_len(xml: &str, cookie: Option<&str>) -> Result<u64, SaveImageError> {
    if xml.contains('\0') {
        return Err(SaveImageError::HasNul { what: "domain XML" });
    }
    if cookie.is_some_and(|c| c.contains('\0')) {
        return Err(SaveImageError::HasNul { what: "cookie" });
    }
    Ok(xml.len() as u64 + 1 + cookie.map_or(0, |c| c.len() as u64 + 1))
}

fn read_exact(file: &mut File, buf: &mut [u8], what: &'static str) -> Result<(), ReadCause> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => {
                let needed = buf.len() as u64;
                return Err(SaveImageError::TooShort { what, needed, got: got as u64 }.into());
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const XML: &str = "<domain type='qemu'><name>web</name></domain>";

    #[test]
    fn header_layout_matches_libvirt() {
        let prefix = SavePrefix::new(XML, Some("<cookie/>"), true).unwrap();
        let bytes = prefix.encode().unwrap();

        assert_eq!(&bytes[..16], b"LibvirtQemudSave");
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(word(16), 2);
        assert_eq!(word(20) as usize, XML.len() + 1 + "<cookie/>".len() + 1 + XML_ROOM);
        assert_eq!((word(24), word(28), word(32) as usize), (1, 0, XML.len() + 1));
        assert!(bytes[36..92].iter().all(|b| *b == 0));
        assert_eq!(&bytes[92..92 + XML.len()], XML.as_bytes());
        assert_eq!(bytes[92 + XML.len()], 0);
        assert_eq!(bytes.len() as u64, prefix.stream_offset());
    }

    #[test]
    fn reads_a_header_written_big_endian() {
        let mut bytes = SavePrefix::new(XML, None, false).unwrap().encode().unwrap();
        for at in (16..36).step_by(4) {
            bytes[at..at + 4].reverse();
        }

        let parsed = SavePrefix::parse(&bytes).unwrap();

        assert_eq!(parsed.xml, XML);
        assert!(!parsed.header.was_running);
    }

    #[test]
    fn refuses_an_unfinished_image_and_other_files() {
        let mut bytes = SavePrefix::new(XML, None, true).unwrap().encode().unwrap();
        bytes[..16].copy_from_slice(PARTIAL_MAGIC);
        assert_eq!(SavePrefix::parse(&bytes), Err(SaveImageError::Partial));
        bytes[..16].copy_from_slice(b"QFI\xfbxxxxxxxxxxxx");
        assert!(matches!(SavePrefix::parse(&bytes), Err(SaveImageError::BadMagic { .. })));
        assert!(matches!(SavePrefix::parse(&bytes[..40]), Err(SaveImageError::TooShort { .. })));
    }

    #[test]
    fn with_xml_keeps_the_stream_where_it_was() {
        let prefix = SavePrefix::new(XML, Some("<cookie/>"), true).unwrap();
        let longer = XML.replace("web", "web-restored-with-a-much-longer-name");

        let edited = prefix.with_xml(&longer).unwrap();

        assert_eq!(edited.stream_offset(), prefix.stream_offset());
        let parsed = SavePrefix::parse(&edited.encode().unwrap()).unwrap();
        assert_eq!((parsed.xml.as_str(), parsed.cookie.as_deref()), (longer.as_str(), Some("<cookie/>")));
        let huge = "x".repeat(XML_ROOM + XML.len() + 100);
        assert!(matches!(prefix.with_xml(&huge), Err(SaveImageError::NoRoom { .. })));
    }

    #[test]
    fn read_takes_the_prefix_of_a_file_and_ignores_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.mem");
        let prefix = SavePrefix::new(XML, None, true).unwrap();
        let mut bytes = prefix.encode().unwrap();
        bytes.extend_from_slice(b"QEVM\0\0\0\x03 and the rest of the stream");
        std::fs::write(&path, &bytes).unwrap();

        assert_eq!(SavePrefix::read(&path).unwrap(), prefix);
        std::fs::write(&path, &bytes[..200]).unwrap();
        let error = SavePrefix::read(&path).unwrap_err();
        assert!(matches!(error.source, ReadCause::Format(SaveImageError::TooShort { .. })), "{error:?}");
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,300}"
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(xml in text(), cookie in proptest::option::of(text()), running: bool) {
            let prefix = SavePrefix::new(&xml, cookie.as_deref(), running).unwrap();
            let bytes = prefix.encode().unwrap();
            prop_assert_eq!(bytes.len() as u64, prefix.stream_offset());
            prop_assert_eq!(SavePrefix::parse(&bytes).unwrap(), prefix);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SavePrefix::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_a_valid_magic(rest in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend(rest);
            let _ = SavePrefix::parse(&bytes);
        }

        #[test]
        fn with_xml_round_trips(xml in text(), new in text(), cookie in proptest::option::of(text())) {
            let prefix = SavePrefix::new(&xml, cookie.as_deref(), true).unwrap();
            let edited = prefix.with_xml(&new).unwrap();
            let parsed = SavePrefix::parse(&edited.encode().unwrap()).unwrap();
            prop_assert_eq!(parsed.stream_offset(), prefix.stream_offset());
            prop_assert_eq!(parsed.xml, new);
            prop_assert_eq!(parsed.cookie, cookie);
        }
    }
}
