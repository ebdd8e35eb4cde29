//! A strict streaming scanner for chunked bodies: where a message ends, and its payload.
//!
//! The bytes pass through unchanged once their end is found; the payload is
//! yielded for clients that cannot read chunked.
//!
//! It is strict on purpose (CRLF only, hex sizes, extensions after `;`):
//! the bytes go to the upstream unchanged, so anything the upstream might
//! frame differently from us is refused rather than guessed (request
//! smuggling).

use std::ops::Range;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("bad chunk size line")]
    BadSize,
    #[error("chunk size too large")]
    TooLarge,
    #[error("missing CRLF in chunked body")]
    BadDelimiter,
    #[error("chunk extension or trailer line too long")]
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { value: u64, digits: u32 },
    SizeAfter { value: u64 },
    Ext { value: u64 },
    SizeLf { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Feeds bytes of a chunked body and reports how many belong to it.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    state: State,
    line_len: usize,
}

const MAX_LINE: usize = 4096;

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner {
            state: State::Size { value: 0, digits: 0 },
            line_len: 0,
        }
    }
}

impl ChunkScanner {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    /// The next state after byte `b` in a state that takes one byte at a time
    /// (size-line tail, extensions, delimiters, trailers).
    fn step(&mut self, state: State, b: u8) -> Result<State, ChunkError> {
        Ok(match state {
            State::SizeAfter { value } => match b {
                b' ' | b'\t' => {
                    self.line_byte()?;
                    State::SizeAfter { value }
                }
                b';' => State::Ext { value },
                b'\r' => State::SizeLf { value },
                _ => return Err(ChunkError::BadSize),
            },
            State::Ext { value } => match b {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(ChunkError::BadDelimiter),
                _ => {
                    self.line_byte()?;
                    State::Ext { value }
                }
            },
            State::SizeLf { value } => match b {
                b'\n' if value == 0 => State::TrailerLineStart,
                b'\n' => State::Data { remaining: value },
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::DataLf => match b {
                b'\n' => State::Size { value: 0, digits: 0 },
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::TrailerLineStart => match b {
                b'\r' => State::FinalLf,
                b'\n' => return Err(ChunkError::BadDelimiter),
                _ => {
                    self.line_len = 1;
                    State::TrailerLine
                }
            },
            State::TrailerLine => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(ChunkError::BadDelimiter),
                _ => {
                    self.line_byte()?;
                    State::TrailerLine
                }
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerLineStart,
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError::BadDelimiter),
            },
            // `scan` handles these itself and never passes them here.
            State::Done | State::Data { .. } | State::Size { .. } => state,
        })
    }

    /// Scans `input`; returns how many bytes of it belong to the body (all of
    /// it unless the body ends inside). `payload` gets the ranges of `input`
    /// that are chunk data (for decoding).
    pub fn scan(&mut self, input: &[u8], mut payload: Option<&mut Vec<Range<usize>>>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data { remaining } => {
                    let take = remaining.min((input.len() - i) as u64) as usize;
                    if let Some(p) = payload.as_deref_mut() {
                        p.push(i..i + take);
                    }
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    continue;
                }
                State::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        if digits >= 15 {
                            return Err(ChunkError::TooLarge);
                        }
                        State::Size {
                            value: value * 16 + d as u64,
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkError::BadSize),
                    None => {
                        self.line_len = digits as usize;
                        // Look at this byte again in the next state.
                        self.state = State::SizeAfter { value };
                        continue;
                    }
                },
                other => self.step(other, b)?,
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], step: usize) -> (Result<usize, ChunkError>, Vec<u8>) {
        let mut sc = ChunkScanner::default();
        let mut used = 0;
        let mut payload = Vec::new();
        for piece in input.chunks(step) {
            let mut ranges = Vec::new();
            match sc.scan(piece, Some(&mut ranges)) {
                Ok(n) => {
                    for r in ranges {
                        payload.extend_from_slice(&piece[r]);
                    }
                    used += n;
                    if sc.is_done() {
                        return (Ok(used), payload);
                    }
                }
                Err(e) => return (Err(e), payload),
            }
        }
        (Err(ChunkError::BadSize), payload)
    }

    #[test]
    fn finds_the_end_at_any_split_and_decodes() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (used, payload) = scan_all(body, step);
            assert_eq!(used, Ok(body.len() - 4), "step {step}");
            assert_eq!(payload, b"hello world");
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1).0, Ok(5));
        assert_eq!(scan_all(b"A \r\n0123456789\r\n0\r\n\r\n", 4).0, Ok(21));
    }

    #[test]
    fn rejects_anything_ambiguous() {
        assert_eq!(scan_all(b"zz\r\n", 1).0, Err(ChunkError::BadSize));
        assert_eq!(scan_all(b"3\r\nabcX\r\n", 1).0, Err(ChunkError::BadDelimiter));
        assert_eq!(scan_all(b"ffffffffffffffffff\r\n", 1).0, Err(ChunkError::TooLarge));
        assert_eq!(
            scan_all(b"3\nabc\r\n0\r\n\r\n", 1).0,
            Err(ChunkError::BadSize),
            "bare LF"
        );
        assert_eq!(scan_all(b"3x\r\nabc\r\n", 1).0, Err(ChunkError::BadSize));
        assert_eq!(scan_all(b"0\r\n\n", 1).0, Err(ChunkError::BadDelimiter));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A well-formed chunked encoding of `chunks`, with optional extensions and trailers.
        fn encode(chunks: &[Vec<u8>], ext: bool, trailer: bool) -> Vec<u8> {
            let mut out = Vec::new();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                if ext {
                    out.extend_from_slice(b";a=b");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            if trailer {
                out.extend_from_slice(b"x-t: 1\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn well_formed_bodies_end_exactly_and_decode_whatever_the_split(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
                ext: bool,
                trailer: bool,
                step in 1usize..64,
                tail in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let body = encode(&chunks, ext, trailer);
                let mut input = body.clone();
                input.extend_from_slice(&tail);
                let (used, payload) = scan_all(&input, step);
                prop_assert_eq!(used, Ok(body.len()));
                prop_assert_eq!(payload, chunks.concat());
            }

            /// Any bytes: no panic, and the outcome never depends on how TCP split them
            /// (one framing per byte stream, whatever the reads).
            #[test]
            fn any_bytes_get_one_outcome_whatever_the_split(
                input in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'5'), Just(b';'), Just(b' '), any::<u8>()],
                    0..200,
                ),
                step in 1usize..32,
            ) {
                let whole = scan_all(&input, input.len().max(1));
                let split = scan_all(&input, step);
                prop_assert_eq!(whole.0.is_ok(), split.0.is_ok());
                if let (Ok(a), Ok(b)) = (whole.0, split.0) {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(whole.1, split.1);
                }
            }
        }
    }
}
