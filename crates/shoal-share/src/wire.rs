//! The transfer protocol: fixed little-endian headers, no serializer, so a request is parsed with a few bounds checks.
//!
//! After the TLS handshake (with a cluster key) both sides send a hello: [`MAGIC`] and their [`VERSION`]; a server
//! answers a hello of another version with its own and closes. Then the client sends requests, one at a time:
//!
//! ```text
//! request:  kind u8 (= 1, GET) | sha256 [32] | offset u64 | length u64 | token_len u16 | token (UTF-8)
//! response: status u8 | total size u64 | length u64        then `length` bytes of the file when the status is Ok
//! ```
//!
//! A request the server cannot parse closes the connection (and is counted); an answerable one that cannot be served
//! (not held, refused, bad range) gets its status and the connection stays open.

use std::io::{self, Read, Write};

/// First bytes of both hellos: not a shoal file server (or client) otherwise.
pub const MAGIC: [u8; 8] = *b"shoal-fs";
/// The protocol version; a server answers only its own.
pub const VERSION: u16 = 1;
/// Longest token a request may carry.
pub const MAX_TOKEN_LEN: usize = 512;
/// Largest byte range one request may ask for (a chunk is at most this long).
pub const MAX_REQUEST_LENGTH: u64 = 64 << 20;

const HELLO_LEN: usize = MAGIC.len() + 2;
const KIND_GET: u8 = 1;
/// kind + sha256 + offset + length + token_len.
const REQUEST_HEADER_LEN: usize = 1 + 32 + 8 + 8 + 2;
const RESPONSE_LEN: usize = 1 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// What a response says about the requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The bytes follow.
    Ok,
    /// The server does not hold a file with that sha256 (any more).
    NotHeld,
    /// The authoriser refused the token for that file.
    Refused,
    /// The range is empty, too long, or past the end of the file.
    BadRange,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotHeld => 1,
            Status::Refused => 2,
            Status::BadRange => 3,
        }
    }

    fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::NotHeld,
            2 => Status::Refused,
            3 => Status::BadRange,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) sha256: [u8; 32],
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: Status,
    pub(crate) total: u64,
    pub(crate) length: u64,
}

pub(crate) fn hello() -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(&VERSION.to_le_bytes());
    out
}

/// Reads a hello; returns the peer's version.
pub(crate) fn read_hello(r: &mut impl Read) -> Result<u16, WireError> {
    let mut buf = [0u8; HELLO_LEN];
    r.read_exact(&mut buf)?;
    if buf[..MAGIC.len()] != MAGIC {
        return Err(WireError::Malformed("not a shoal file-transfer hello"));
    }
    Ok(u16::from_le_bytes([buf[MAGIC.len()], buf[MAGIC.len() + 1]]))
}

/// Encodes a request; `None` when the token is longer than [`MAX_TOKEN_LEN`].
pub(crate) fn encode_request(req: &Request) -> Option<Vec<u8>> {
    let token = req.token.as_bytes();
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + token.len());
    out.push(KIND_GET);
    out.extend_from_slice(&req.sha256);
    out.extend_from_slice(&req.offset.to_le_bytes());
    out.extend_from_slice(&req.length.to_le_bytes());
    out.extend_from_slice(&u16::try_from(token.len()).ok()?.to_le_bytes());
    out.extend_from_slice(token);
    Some(out)
}

/// Reads one request; `Ok(None)` when the peer closed the connection between requests.
pub(crate) fn read_request(r: &mut impl Read) -> Result<Option<Request>, WireError> {
    let mut header = [0u8; REQUEST_HEADER_LEN];
    // The first byte alone, so a clean close between requests is told apart from a truncated request.
    loop {
        match r.read(&mut header[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    r.read_exact(&mut header[1..])?;
    if header[0] != KIND_GET {
        return Err(WireError::Malformed("unknown request kind"));
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&header[1..33]);
    let offset = u64_at(&header, 33);
    let length = u64_at(&header, 41);
    let token_len = usize::from(u16::from_le_bytes([header[49], header[50]]));
    if token_len > MAX_TOKEN_LEN {
        return Err(WireError::Malformed("token too long"));
    }
    let mut token = vec![0u8; token_len];
    r.read_exact(&mut token)?;
    let token = String::from_utf8(token).map_err(|_| WireError::Malformed("token is not UTF-8"))?;
    Ok(Some(Request {
        sha256,
        offset,
        length,
        token,
    }))
}

pub(crate) fn encode_response(resp: &Response) -> [u8; RESPONSE_LEN] {
    let mut out = [0u8; RESPONSE_LEN];
    out[0] = resp.status.code();
    out[1..9].copy_from_slice(&resp.total.to_le_bytes());
    out[9..17].copy_from_slice(&resp.length.to_le_bytes());
    out
}

pub(crate) fn read_response(r: &mut impl Read) -> Result<Response, WireError> {
    let mut buf = [0u8; RESPONSE_LEN];
    r.read_exact(&mut buf)?;
    let status = Status::from_code(buf[0]).ok_or(WireError::Malformed("unknown response status"))?;
    Ok(Response {
        status,
        total: u64_at(&buf, 1),
        length: u64_at(&buf, 9),
    })
}

pub(crate) fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    w.write_all(&encode_response(resp))?;
    w.flush()
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses a sha256 written as 64 hex digits (either case).
pub fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex_text.len() != 64 {
        return None;
    }
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request() -> Request {
        Request {
            sha256: [7; 32],
            offset: 1 << 40,
            length: 8 << 20,
            token: "tök".into(),
        }
    }

    #[test]
    fn a_request_round_trips_and_a_clean_close_is_not_an_error() {
        let bytes = encode_request(&request()).unwrap();
        let mut r = &bytes[..];
        assert_eq!(read_request(&mut r).unwrap(), Some(request()));
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error_not_a_request() {
        let bytes = encode_request(&request()).unwrap();
        for cut in 1..bytes.len() {
            let mut r = &bytes[..cut];
            assert!(read_request(&mut r).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        let mut bytes = encode_request(&request()).unwrap();
        bytes[0] = 9;
        assert!(matches!(read_request(&mut &bytes[..]), Err(WireError::Malformed(_))));
        let mut bytes = encode_request(&request()).unwrap();
        bytes[49..51].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(read_request(&mut &bytes[..]), Err(WireError::Malformed(_))));
        let mut bytes = encode_request(&request()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = 0xff;
        assert!(matches!(read_request(&mut &bytes[..]), Err(WireError::Malformed(_))));
        let long = Request {
            token: "x".repeat(MAX_TOKEN_LEN + 1),
            ..request()
        };
        assert!(encode_request(&long).is_none());
    }

    #[test]
    fn responses_and_hellos_round_trip() {
        for status in [Status::Ok, Status::NotHeld, Status::Refused, Status::BadRange] {
            let resp = Response {
                status,
                total: 12345,
                length: 99,
            };
            assert_eq!(read_response(&mut &encode_response(&resp)[..]).unwrap(), resp);
        }
        let mut bad = encode_response(&Response {
            status: Status::Ok,
            total: 0,
            length: 0,
        });
        bad[0] = 200;
        assert!(read_response(&mut &bad[..]).is_err());
        assert_eq!(read_hello(&mut &hello()[..]).unwrap(), VERSION);
        assert!(read_hello(&mut &b"GET / HTTP/1.1\r\n"[..]).is_err());
    }

    #[test]
    fn sha256_text_is_64_hex_digits() {
        let hex_text = "ab".repeat(32);
        assert_eq!(parse_sha256(&hex_text), Some([0xab; 32]));
        assert_eq!(parse_sha256(&hex_text.to_uppercase()), Some([0xab; 32]));
        assert_eq!(parse_sha256(&hex_text[2..]), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
    }
}

/// Fuzzing the request, response and hello decoders (issue 15: every network decoder): whatever the bytes, a read
/// returns a message, a clean end or an error, never panics, and a stream of requests ends within as many reads as
/// it has bytes. `SHOAL_FUZZ_CASES=1000000` runs the long version (BENCHMARKS.md, "Security").
#[cfg(test)]
mod fuzz {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    use crate::fuzz_support;

    fn request(sha: u8, offset: u64, length: u64, token: String) -> Vec<u8> {
        let req = Request {
            sha256: [sha; 32],
            offset,
            length,
            token,
        };
        encode_request(&req).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_support::cases(), ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            let mut stream = &bytes[..];
            let mut reads = 0usize;
            while let Ok(Some(req)) = read_request(&mut stream) {
                prop_assert!(req.token.len() <= MAX_TOKEN_LEN);
                reads += 1;
                prop_assert!(reads <= bytes.len());
            }
            let _ = read_response(&mut &bytes[..]);
            let _ = read_hello(&mut &bytes[..]);
        }

        #[test]
        fn edited_and_cut_requests_are_read_or_refused(
            sha in any::<u8>(),
            offset in any::<u64>(),
            length in any::<u64>(),
            token in "[a-f0-9]{0,64}",
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
            repeat in 1usize..4,
        ) {
            let one = request(sha, offset, length, token.clone());
            let mut bytes: Vec<u8> = one.iter().copied().cycle().take(one.len() * repeat).collect();
            let unedited = edits.is_empty();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let whole = bytes.len() == one.len() * repeat;
            let mut stream = &bytes[..];
            let mut read = Vec::new();
            while let Ok(Some(req)) = read_request(&mut stream) {
                prop_assert!(req.token.len() <= MAX_TOKEN_LEN);
                read.push(req);
                prop_assert!(read.len() <= repeat);
            }
            if unedited && whole {
                // Untouched requests come back as they were sent.
                prop_assert_eq!(read.len(), repeat);
                prop_assert!(read.iter().all(|r| r.offset == offset && r.length == length && r.token == token));
            }
        }

        #[test]
        fn edited_responses_are_read_or_refused(
            code in any::<u8>(),
            total in any::<u64>(),
            length in any::<u64>(),
            cut in 0usize..=RESPONSE_LEN,
        ) {
            let mut bytes = encode_response(&Response { status: Status::Ok, total, length }).to_vec();
            bytes[0] = code;
            bytes.truncate(cut);
            match read_response(&mut &bytes[..]) {
                Ok(resp) => {
                    prop_assert!(cut == RESPONSE_LEN && code <= 3);
                    prop_assert_eq!((resp.total, resp.length), (total, length));
                }
                Err(_) => prop_assert!(cut < RESPONSE_LEN || code > 3),
            }
        }
    }
}
