//! Length-prefixed frames shared by the worker ↔ runner channel (SYSTEM.md §10.3) and the pipeline data plane
//! (§10.4): `[u32 little-endian length][version u8][postcard body]`, the length counting the version byte and the
//! body. A frame over [`MAX_FRAME`], another version or a body that does not decode is an error that closes the
//! connection; nothing is guessed.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte of every frame this build writes and the only one it reads.
pub const FRAME_VERSION: u8 = 1;

/// The largest frame accepted (version byte and body): a 512-token prefill chunk of a 16k-wide model is 32 MiB.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("frame version {0}, expected {FRAME_VERSION}")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let body = postcard::to_stdvec(msg)?;
    let len = body.len() + 1;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    let mut buf = Vec::with_capacity(body.len() + 5);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.push(FRAME_VERSION);
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before the first byte of a frame.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    if buf[0] != FRAME_VERSION {
        return Err(FrameError::Version(buf[0]));
    }
    let (msg, rest) = postcard::take_from_bytes(&buf[1..])?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(postcard::Error::DeserializeBadEncoding));
    }
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &(7u32, String::from("hi"))).unwrap();
        write_frame(&mut buf, &vec![1.5f32; 3]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<(u32, String)>(&mut r).unwrap(), Some((7, "hi".into())));
        assert_eq!(read_frame::<Vec<f32>>(&mut r).unwrap(), Some(vec![1.5; 3]));
        assert_eq!(read_frame::<u32>(&mut r).unwrap(), None);
    }

    #[test]
    fn bad_frames_are_errors() {
        let frame = |len: u32, rest: &[u8]| [&len.to_le_bytes()[..], rest].concat();
        let cases = [
            frame(0, &[]),
            frame(u32::MAX, &[1]),
            frame(2, &[9, 0]),
            frame(3, &[FRAME_VERSION, 0x80, 0x80]),
            frame(3, &[FRAME_VERSION, 1, 2]), // a u8 followed by a trailing byte
            frame(10, &[FRAME_VERSION, 1]),   // truncated
            vec![1, 0],                       // truncated length
        ];
        for (i, c) in cases.iter().enumerate() {
            let r = read_frame::<u8>(&mut &c[..]);
            assert!(r.is_err() || i == 6 && matches!(r, Ok(None)), "case {i}: {r:?}");
        }
    }
}
