//! The client side of the NATS protocol, parsed in place.
//!
//! [`Parser::parse`] takes the bytes received so far and returns the first
//! operation in them, borrowed from those bytes (subject, reply, payload and
//! header block are slices of the input: nothing is copied), with how many
//! bytes it used; or [`Parsed::Incomplete`] when the operation has not all
//! arrived yet. The caller keeps the unused bytes, appends what it reads next
//! and calls again. So a PUB that arrived whole is never reassembled, and one
//! that arrived in pieces sits in the caller's buffer until it is whole.
//!
//! Bounds, as nats-server has them: a control line longer than
//! `max_control_line` (4096 by default) is an error as soon as that many
//! bytes have arrived without a line end, and a payload size above
//! `max_payload` is an error before any payload is awaited, so a peer can
//! make the caller hold at most `max_control_line + max_payload + 2` bytes.
//!
//! Operation names are matched without regard to case, and arguments are
//! separated by any run of spaces and tabs (both as nats-server accepts
//! them, so that `telnet` sessions work); a line may end in `\r\n` or `\n`.

use thiserror::Error;

/// The longest control line nats-server accepts by default.
pub const MAX_CONTROL_LINE: usize = 4096;

/// One operation a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT {json}`: the JSON text, unparsed.
    Connect(&'a [u8]),
    /// `PUB` (no headers) or `HPUB` (with a header block).
    Pub(Pub<'a>),
    /// `SUB subject [queue] sid`.
    Sub {
        /// The subject pattern.
        subject: &'a [u8],
        /// The queue group.
        queue: Option<&'a [u8]>,
        /// The client's id for the subscription.
        sid: &'a [u8],
    },
    /// `UNSUB sid [max]`.
    Unsub {
        /// The subscription.
        sid: &'a [u8],
        /// Unsubscribe after this many messages in all, if given.
        max: Option<u64>,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

/// A message a client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pub<'a> {
    /// The subject, unchecked.
    pub subject: &'a [u8],
    /// The reply subject, unchecked.
    pub reply: Option<&'a [u8]>,
    /// The header block (`NATS/1.0\r\n...\r\n\r\n`) of an HPUB; `None` for PUB.
    pub headers: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

/// What [`Parser::parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// An operation, and how many bytes of the input it took.
    Op(ClientOp<'a>, usize),
    /// The input holds no whole operation yet. At least `needed` bytes in
    /// all are needed (a lower bound while the control line is incomplete).
    Incomplete {
        /// Bytes the input must hold before the next call can succeed.
        needed: usize,
    },
}

/// Why the input is not the NATS client protocol. Every one of them is
/// fatal to the connection: past it, where the next operation starts is
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not an operation a client may send, or a payload not followed by
    /// `\r\n` (its size lied).
    #[error("unknown protocol operation")]
    UnknownOperation,
    /// No line end within the control-line limit.
    #[error("maximum control line exceeded")]
    ControlLineTooLong,
    /// A payload size above the limit.
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The size the client announced (saturated at `u64::MAX`).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// An operation with missing, extra or malformed arguments.
    #[error("malformed arguments to {0}")]
    BadArguments(&'static str),
}

/// The parser. Holds only its limits and a hint of how many bytes the
/// operation being received needs, so that a large payload arriving in
/// many reads does not have its control line parsed again on each.
#[derive(Debug, Clone)]
pub struct Parser {
    max_control_line: usize,
    max_payload: usize,
    /// The input must hold this many bytes before parsing is worth trying.
    needed: usize,
}

impl Parser {
    /// A parser with these limits.
    pub fn new(max_control_line: usize, max_payload: usize) -> Self {
        Self {
            max_control_line,
            max_payload,
            needed: 0,
        }
    }

    /// The payload limit.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Parses the first operation of `input` (the bytes received and not
    /// yet used, in order). After [`Parsed::Op`], call again with the input
    /// past the bytes it took; after [`Parsed::Incomplete`], with the same
    /// input extended by what arrives next.
    pub fn parse<'a>(&mut self, input: &'a [u8]) -> Result<Parsed<'a>, ParseError> {
        if input.len() < self.needed {
            return Ok(Parsed::Incomplete {
                needed: self.needed,
            });
        }
        let parsed = self.parse_fresh(input)?;
        self.needed = match parsed {
            Parsed::Op(..) => 0,
            Parsed::Incomplete { needed } => needed,
        };
        Ok(parsed)
    }

    fn parse_fresh<'a>(&self, input: &'a [u8]) -> Result<Parsed<'a>, ParseError> {
        // The line end is searched for within the limit only: the scan per
        // call is bounded whatever the client sends.
        let window = &input[..input.len().min(self.max_control_line + 2)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if input.len() > self.max_control_line + 1 {
                return Err(ParseError::ControlLineTooLong);
            }
            return Ok(Parsed::Incomplete {
                needed: input.len() + 1,
            });
        };
        let line = match &input[..newline] {
            [line @ .., b'\r'] => line,
            line => line,
        };
        if line.len() > self.max_control_line {
            return Err(ParseError::ControlLineTooLong);
        }
        let body = newline + 1;
        let (name, rest) = split_op(line);
        let mut args = Args::new(rest);
        let op = if name.eq_ignore_ascii_case(b"PUB") {
            let (subject, reply, size) = match (args.next(), args.next(), args.next(), args.next())
            {
                (Some(subject), Some(size), None, None) => (subject, None, size),
                (Some(subject), Some(reply), Some(size), None) => (subject, Some(reply), size),
                _ => return Err(ParseError::BadArguments("PUB")),
            };
            let size = self.payload_size(size, "PUB")?;
            return self.with_payload(input, body, size, |payload| {
                ClientOp::Pub(Pub {
                    subject,
                    reply,
                    headers: None,
                    payload,
                })
            });
        } else if name.eq_ignore_ascii_case(b"HPUB") {
            let (subject, reply, header_size, size) = match (
                args.next(),
                args.next(),
                args.next(),
                args.next(),
                args.next(),
            ) {
                (Some(subject), Some(header_size), Some(size), None, None) => {
                    (subject, None, header_size, size)
                }
                (Some(subject), Some(reply), Some(header_size), Some(size), None) => {
                    (subject, Some(reply), header_size, size)
                }
                _ => return Err(ParseError::BadArguments("HPUB")),
            };
            let size = self.payload_size(size, "HPUB")?;
            let header_size = parse_number(header_size)
                .filter(|&h| h <= size as u64)
                .ok_or(ParseError::BadArguments("HPUB"))? as usize;
            return self.with_payload(input, body, size, |all| {
                let (headers, payload) = all.split_at(header_size);
                ClientOp::Pub(Pub {
                    subject,
                    reply,
                    headers: Some(headers),
                    payload,
                })
            });
        } else if name.eq_ignore_ascii_case(b"SUB") {
            match (args.next(), args.next(), args.next(), args.next()) {
                (Some(subject), Some(sid), None, None) => ClientOp::Sub {
                    subject,
                    queue: None,
                    sid,
                },
                (Some(subject), Some(queue), Some(sid), None) => ClientOp::Sub {
                    subject,
                    queue: Some(queue),
                    sid,
                },
                _ => return Err(ParseError::BadArguments("SUB")),
            }
        } else if name.eq_ignore_ascii_case(b"UNSUB") {
            match (args.next(), args.next(), args.next()) {
                (Some(sid), None, None) => ClientOp::Unsub { sid, max: None },
                (Some(sid), Some(max), None) => ClientOp::Unsub {
                    sid,
                    max: Some(parse_number(max).ok_or(ParseError::BadArguments("UNSUB"))?),
                },
                _ => return Err(ParseError::BadArguments("UNSUB")),
            }
        } else if name.eq_ignore_ascii_case(b"PING") && args.next().is_none() {
            ClientOp::Ping
        } else if name.eq_ignore_ascii_case(b"PONG") && args.next().is_none() {
            ClientOp::Pong
        } else if name.eq_ignore_ascii_case(b"CONNECT") {
            ClientOp::Connect(trim(rest))
        } else {
            return Err(ParseError::UnknownOperation);
        };
        Ok(Parsed::Op(op, body))
    }

    /// A size argument, checked against the payload limit.
    fn payload_size(&self, text: &[u8], op: &'static str) -> Result<usize, ParseError> {
        if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::BadArguments(op));
        }
        // Digits that overflow are a size no limit allows.
        let size = parse_number(text).unwrap_or(u64::MAX);
        match usize::try_from(size) {
            Ok(size) if size <= self.max_payload => Ok(size),
            _ => Err(ParseError::PayloadTooLarge {
                size,
                max: self.max_payload,
            }),
        }
    }

    /// The operation whose `size` bytes of payload start at `body`, if
    /// they and the `\r\n` after them have arrived.
    fn with_payload<'a>(
        &self,
        input: &'a [u8],
        body: usize,
        size: usize,
        make: impl FnOnce(&'a [u8]) -> ClientOp<'a>,
    ) -> Result<Parsed<'a>, ParseError> {
        // `size` is at most `max_payload` and `body` at most the control
        // line: no overflow.
        let end = body + size;
        if input.len() < end + 2 {
            return Ok(Parsed::Incomplete { needed: end + 2 });
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(ParseError::UnknownOperation);
        }
        Ok(Parsed::Op(make(&input[body..end]), end + 2))
    }
}

/// The operation's name and the rest of the line.
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    let line = trim(line);
    match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(at) => (&line[..at], &line[at..]),
        None => (line, &[]),
    }
}

fn trim(mut text: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = text {
        text = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = text {
        text = rest;
    }
    text
}

/// Arguments separated by runs of spaces and tabs.
struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = trim(self.rest);
        if rest.is_empty() {
            self.rest = rest;
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// A decimal number of ASCII digits; `None` if empty, not digits, or over
/// `u64::MAX`.
pub(crate) fn parse_number(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        Parser::new(MAX_CONTROL_LINE, 1 << 20)
    }

    fn op(input: &[u8]) -> (ClientOp<'_>, usize) {
        match parser().parse(input) {
            Ok(Parsed::Op(op, used)) => (op, used),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn every_client_operation() {
        assert_eq!(op(b"PING\r\n"), (ClientOp::Ping, 6));
        assert_eq!(op(b"pong\n"), (ClientOp::Pong, 5));
        assert_eq!(
            op(b"CONNECT {\"verbose\":false, \"name\":\"a b\"}\r\n").0,
            ClientOp::Connect(b"{\"verbose\":false, \"name\":\"a b\"}")
        );
        assert_eq!(
            op(b"PUB orders.eu 5\r\nhello\r\nPING\r\n"),
            (
                ClientOp::Pub(Pub {
                    subject: b"orders.eu",
                    reply: None,
                    headers: None,
                    payload: b"hello"
                }),
                24
            )
        );
        assert_eq!(
            op(b"pub\torders  _INBOX.1 0\r\n\r\n").0,
            ClientOp::Pub(Pub {
                subject: b"orders",
                reply: Some(b"_INBOX.1"),
                headers: None,
                payload: b""
            })
        );
        let hpub = b"HPUB a r 18 23\r\nNATS/1.0\r\nK: v\r\n\r\nhello\r\n";
        assert_eq!(
            op(hpub),
            (
                ClientOp::Pub(Pub {
                    subject: b"a",
                    reply: Some(b"r"),
                    headers: Some(b"NATS/1.0\r\nK: v\r\n\r\n".as_ref()),
                    payload: b"hello"
                }),
                hpub.len()
            )
        );
        assert_eq!(
            op(b"SUB foo.* workers 7\r\n").0,
            ClientOp::Sub {
                subject: b"foo.*",
                queue: Some(b"workers"),
                sid: b"7"
            }
        );
        assert_eq!(
            op(b"UNSUB 7 10\r\n").0,
            ClientOp::Unsub {
                sid: b"7",
                max: Some(10)
            }
        );
    }

    #[test]
    fn the_payload_is_borrowed_from_the_input() {
        let input = b"PUB a 3\r\nabc\r\n";
        let (ClientOp::Pub(publish), _) = op(input) else {
            panic!()
        };
        assert_eq!(publish.payload.as_ptr(), input[9..].as_ptr());
    }

    #[test]
    fn an_operation_in_pieces_waits_for_its_last_byte() {
        let input = b"PUB a 5\r\nhello\r\n";
        let mut parser = parser();
        for end in 0..input.len() {
            assert!(
                matches!(parser.parse(&input[..end]), Ok(Parsed::Incomplete { .. })),
                "{end}"
            );
        }
        assert!(matches!(parser.parse(input), Ok(Parsed::Op(..))));
    }

    #[test]
    fn lies_and_limits_are_errors() {
        let mut parser = Parser::new(40, 100);
        let errors: [(&[u8], ParseError); 10] = [
            (b"FOO bar\r\n", ParseError::UnknownOperation),
            (b"PUB a 2\r\nhello\r\n", ParseError::UnknownOperation),
            (
                b"PUB a 4294967296\r\n",
                ParseError::PayloadTooLarge {
                    size: 1 << 32,
                    max: 100,
                },
            ),
            (
                b"PUB a 99999999999999999999999\r\n",
                ParseError::PayloadTooLarge {
                    size: u64::MAX,
                    max: 100,
                },
            ),
            (b"PUB a -1\r\n", ParseError::BadArguments("PUB")),
            (b"PUB a\r\n", ParseError::BadArguments("PUB")),
            (b"HPUB a 10 5\r\n", ParseError::BadArguments("HPUB")),
            (b"SUB a\r\n", ParseError::BadArguments("SUB")),
            (b"UNSUB 1 x\r\n", ParseError::BadArguments("UNSUB")),
            (
                b"PUB aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ParseError::ControlLineTooLong,
            ),
        ];
        for (input, error) in errors {
            assert_eq!(
                parser.parse(input),
                Err(error),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
