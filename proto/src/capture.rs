//! Capture files: a versioned, length-delimited recording of loader events.
//!
//! Layout (format version 1, see `proto/tandem/loader/v1/capture.proto`):
//! the 8-byte magic `TNDMCAP\0`, a little-endian `u16` format version, then records,
//! each a protobuf varint length followed by that many bytes. Record 0 is a
//! [`CaptureHeader`], every later record one [`Event`]. A file may end after any
//! whole record; anything else is an error naming the file and the byte offset.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::v1::CaptureHeader;
use crate::Event;

/// First bytes of every capture file.
pub const MAGIC: &[u8; 8] = b"TNDMCAP\0";
/// Format version written by this build; readers accept exactly this version.
pub const FORMAT_VERSION: u16 = 1;
/// Largest record a reader accepts (guards against reading a corrupt length).
pub const MAX_RECORD_LEN: u64 = 16 * 1024 * 1024;

const PREAMBLE_LEN: u64 = MAGIC.len() as u64 + 2;

/// Output buffer of [`CaptureWriter::create`]: one `write` per 256 KiB instead of per
/// 8 KiB (the default), so that `record` spends its time encoding, not in syscalls.
const WRITE_BUFFER: usize = 256 * 1024;

/// What went wrong reading or writing a capture file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture file {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("capture file {path}: not a tandem capture file (bad magic at byte offset 0)")]
    BadMagic { path: PathBuf },
    #[error(
        "capture file {path}: unsupported format version {found} at byte offset 8 \
         (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion { path: PathBuf, found: u16 },
    #[error("capture file {path}: truncated at byte offset {offset}: {what}")]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("capture file {path}: corrupt record {record} at byte offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        record: u64,
        offset: u64,
        what: String,
    },
}

/// Reads a capture file record by record.
pub struct CaptureReader<R> {
    input: R,
    path: PathBuf,
    offset: u64,
    record: u64,
    header: CaptureHeader,
    buf: Vec<u8>,
}

impl CaptureReader<BufReader<File>> {
    /// Opens `path` and reads its preamble and header.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            action: "open it",
            source,
        })?;
        Self::new(BufReader::new(file), path)
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the preamble and header from `input`; `path` is used in messages.
    pub fn new(mut input: R, path: &Path) -> Result<Self, CaptureError> {
        let path = path.to_owned();
        let mut preamble = [0u8; PREAMBLE_LEN as usize];
        let got = read_full(&mut input, &mut preamble).map_err(|source| CaptureError::Io {
            path: path.clone(),
            action: "read it",
            source,
        })?;
        if got < MAGIC.len() || &preamble[..MAGIC.len()] != MAGIC {
            return Err(CaptureError::BadMagic { path });
        }
        if got < preamble.len() {
            return Err(CaptureError::Truncated {
                path,
                offset: got as u64,
                what: "the format version is cut short".into(),
            });
        }
        let found = u16::from_le_bytes([preamble[8], preamble[9]]);
        if found != FORMAT_VERSION {
            return Err(CaptureError::UnsupportedVersion { path, found });
        }
        let mut reader = CaptureReader {
            input,
            path,
            offset: PREAMBLE_LEN,
            record: 0,
            header: CaptureHeader::default(),
            buf: Vec::new(),
        };
        let start = reader.offset;
        match reader.next_record()? {
            Some(()) => {
                reader.header = CaptureHeader::decode(reader.buf.as_slice()).map_err(|e| {
                    CaptureError::Corrupt {
                        path: reader.path.clone(),
                        record: 0,
                        offset: start,
                        what: format!("header does not decode: {e}"),
                    }
                })?;
            }
            None => {
                return Err(CaptureError::Truncated {
                    path: reader.path.clone(),
                    offset: start,
                    what: "the file ends before its header record".into(),
                })
            }
        }
        Ok(reader)
    }

    /// The file's header.
    pub fn header(&self) -> &CaptureHeader {
        &self.header
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next event, or `None` at a clean end of file.
    pub fn next_event(&mut self) -> Result<Option<Event>, CaptureError> {
        let start = self.offset;
        if self.next_record()?.is_none() {
            return Ok(None);
        }
        Event::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|e| CaptureError::Corrupt {
                path: self.path.clone(),
                record: self.record - 1,
                offset: start,
                what: format!("event does not decode: {e}"),
            })
    }

    /// Reads one length-delimited record into `self.buf`.
    fn next_record(&mut self) -> Result<Option<()>, CaptureError> {
        let start = self.offset;
        let Some(len) = self.read_varint()? else {
            return Ok(None);
        };
        if len > MAX_RECORD_LEN {
            return Err(CaptureError::Corrupt {
                path: self.path.clone(),
                record: self.record,
                offset: start,
                what: format!("declared length {len} exceeds the {MAX_RECORD_LEN}-byte limit"),
            });
        }
        self.buf.resize(len as usize, 0);
        let got = read_full(&mut self.input, &mut self.buf).map_err(|source| CaptureError::Io {
            path: self.path.clone(),
            action: "read it",
            source,
        })?;
        if got < self.buf.len() {
            return Err(CaptureError::Truncated {
                path: self.path.clone(),
                offset: self.offset + got as u64,
                what: format!(
                    "record {} starting at byte offset {start} declares {len} bytes but only {got} remain",
                    self.record
                ),
            });
        }
        self.offset += len;
        self.record += 1;
        Ok(Some(()))
    }

    /// Reads a varint length; `None` at a clean end of file before its first byte.
    fn read_varint(&mut self) -> Result<Option<u64>, CaptureError> {
        let start = self.offset;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let mut byte = [0u8; 1];
            let got = read_full(&mut self.input, &mut byte).map_err(|source| CaptureError::Io {
                path: self.path.clone(),
                action: "read it",
                source,
            })?;
            if got == 0 {
                if i == 0 {
                    return Ok(None);
                }
                return Err(CaptureError::Truncated {
                    path: self.path.clone(),
                    offset: self.offset,
                    what: format!("record {} length prefix is cut short", self.record),
                });
            }
            self.offset += 1;
            value |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(CaptureError::Corrupt {
            path: self.path.clone(),
            record: self.record,
            offset: start,
            what: "length prefix is longer than 10 bytes".into(),
        })
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<Event, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

/// Writes a capture file.
pub struct CaptureWriter<W: Write> {
    output: W,
    path: PathBuf,
    buf: Vec<u8>,
    events: u64,
}

impl CaptureWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the preamble and `header`.
    pub fn create(path: &Path, header: &CaptureHeader) -> Result<Self, CaptureError> {
        let file = File::create(path).map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            action: "create it",
            source,
        })?;
        Self::new(BufWriter::with_capacity(WRITE_BUFFER, file), path, header)
    }
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the preamble and `header` to `output`; `path` is used in messages.
    pub fn new(output: W, path: &Path, header: &CaptureHeader) -> Result<Self, CaptureError> {
        let mut writer = CaptureWriter {
            output,
            path: path.to_owned(),
            buf: Vec::new(),
            events: 0,
        };
        let mut preamble = Vec::with_capacity(PREAMBLE_LEN as usize);
        preamble.extend_from_slice(MAGIC);
        preamble.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        writer.write_bytes(&preamble)?;
        writer.write_message(header)?;
        Ok(writer)
    }

    /// Appends one event.
    pub fn write_event(&mut self, event: &Event) -> Result<(), CaptureError> {
        self.write_message(event)?;
        self.events += 1;
        Ok(())
    }

    /// Events written so far.
    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Flushes buffered output and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CaptureError> {
        self.output.flush().map_err(|source| CaptureError::Io {
            path: self.path.clone(),
            action: "write it",
            source,
        })?;
        Ok(self.output)
    }

    fn write_message<M: Message>(&mut self, message: &M) -> Result<(), CaptureError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        message
            .encode_length_delimited(&mut buf)
            .map_err(|e| CaptureError::Io {
                path: self.path.clone(),
                action: "encode a record for it",
                source: io::Error::other(e),
            })?;
        let result = self.write_bytes(&buf);
        self.buf = buf;
        result
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), CaptureError> {
        self.output
            .write_all(bytes)
            .map_err(|source| CaptureError::Io {
                path: self.path.clone(),
                action: "write it",
                source,
            })
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, event::Kind};

    fn data_event(seq: u64, payload: &[u8]) -> Event {
        Event {
            seq,
            mono_ns: 1_000 + seq,
            kind: Some(Kind::Data(v1::Data {
                pid: 42,
                tid: 43,
                conn_id: 7,
                direction: v1::Direction::Ingress as i32,
                total_len: payload.len() as u64,
                payload: payload.to_vec().into(),
                truncated: false,
                ..Default::default()
            })),
        }
    }

    fn header() -> CaptureHeader {
        CaptureHeader {
            protocol: Some(crate::protocol_version()),
            realtime_offset_ns: 123,
            source: "test".into(),
            created_by: "unit test".into(),
            created_unix_ns: 1,
        }
    }

    fn encode(events: &[Event]) -> Vec<u8> {
        let path = Path::new("mem.tcap");
        let mut w = CaptureWriter::new(Vec::new(), path, &header()).unwrap();
        for e in events {
            w.write_event(e).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Event>, CaptureError> {
        let r = CaptureReader::new(bytes, Path::new("mem.tcap"))?;
        r.collect()
    }

    #[test]
    fn round_trip_keeps_header_and_events_in_order() {
        let events: Vec<Event> = (0..50)
            .map(|i| data_event(i, format!("GET /{i} HTTP/1.1\r\n").as_bytes()))
            .collect();
        let bytes = encode(&events);
        let reader = CaptureReader::new(bytes.as_slice(), Path::new("mem.tcap")).unwrap();
        assert_eq!(reader.header(), &header());
        let back: Vec<Event> = reader.map(|e| e.unwrap()).collect();
        assert_eq!(back, events);
    }

    #[test]
    fn every_truncation_is_an_error_naming_file_and_offset() {
        let bytes = encode(&[data_event(0, b"hello"), data_event(1, b"world")]);
        let header_end = {
            let r = CaptureReader::new(bytes.as_slice(), Path::new("mem.tcap")).unwrap();
            r.offset() as usize
        };
        let first_end = {
            let mut r = CaptureReader::new(bytes.as_slice(), Path::new("mem.tcap")).unwrap();
            r.next_event().unwrap();
            r.offset() as usize
        };
        for cut in 0..bytes.len() {
            let result = read_all(&bytes[..cut]);
            if cut == header_end || cut == first_end {
                // A file may end after any whole record.
                assert!(result.is_ok(), "cut at {cut}: {result:?}");
                continue;
            }
            let err = result.expect_err(&format!("cut at {cut} must fail"));
            let msg = err.to_string();
            assert!(msg.contains("mem.tcap"), "cut {cut}: {msg}");
            if cut >= MAGIC.len() {
                assert!(msg.contains("offset"), "cut {cut}: {msg}");
            }
        }
    }

    #[test]
    fn truncated_record_reports_where_it_starts_and_ends() {
        let bytes = encode(&[data_event(0, b"hello")]);
        let err = read_all(&bytes[..bytes.len() - 2]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("truncated at byte offset {}", bytes.len() - 2)),
            "{msg}"
        );
    }

    #[test]
    fn bad_magic_version_and_garbage_are_clear_errors() {
        let mut bytes = encode(&[data_event(0, b"x")]);
        let mut wrong_version = bytes.clone();
        wrong_version[8] = 9;
        let msg = read_all(&wrong_version).unwrap_err().to_string();
        assert!(msg.contains("unsupported format version 9"), "{msg}");

        bytes[0] = b'X';
        let msg = read_all(&bytes).unwrap_err().to_string();
        assert!(msg.contains("not a tandem capture file"), "{msg}");

        let mut garbage = encode(&[]);
        garbage.extend_from_slice(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let msg = read_all(&garbage).unwrap_err().to_string();
        assert!(msg.contains("corrupt record 1"), "{msg}");
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut bytes = encode(&[]);
        // varint for 1 GiB
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x04]);
        let msg = read_all(&bytes).unwrap_err().to_string();
        assert!(msg.contains("exceeds"), "{msg}");
    }
}
