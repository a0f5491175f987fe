//! A Server-Sent Events parser without I/O: bytes in, [`Frame`]s out, as the HTML
//! standard's "event stream interpretation" reads them. The clients read `GET /events`
//! streams with it (docs/PROTOCOL.md); tests may read the server's streams with it too.
//!
//! ```
//! use distributed_events_shared::sse::{Frame, Message, SseParser};
//!
//! let mut parser = SseParser::new(1024);
//! let mut frames = Vec::new();
//! // Lines may be split anywhere across chunks, and end in LF, CRLF or CR.
//! parser.feed(b": ok\r\n\r\nid: 7\nda", &mut frames).unwrap();
//! parser.feed(b"ta: {}\n\n", &mut frames).unwrap();
//! assert_eq!(
//!     frames,
//!     [
//!         Frame::Comment("ok".into()),
//!         Frame::Message(Message { id: Some("7".into()), event: None, data: Some("{}".into()) }),
//!     ]
//! );
//! ```

use std::fmt;

/// What one stream carries, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The fields up to a blank line, when it had an `id`, `event` or `data` field.
    Message(Message),
    /// A line that starts with `:` (a keep-alive), without the colon and one space.
    Comment(String),
    /// A valid `retry:` field: the reconnection delay the server asks for, in ms.
    Retry(u64),
}

/// One message: the fields between two blank lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Its `id:` field, if it had one (an id with a NUL is ignored, as browsers do).
    pub id: Option<String>,
    /// Its `event:` field; without one, `EventSource` dispatches it as `message`.
    pub event: Option<String>,
    /// Its `data:` lines joined by `\n`; `None` when it had none.
    pub data: Option<String>,
}

/// A message (or a line of one) grew past the parser's bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The bound, in bytes.
    pub max_message_bytes: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an event-stream message is larger than {} bytes",
            self.max_message_bytes
        )
    }
}

impl std::error::Error for TooLarge {}

/// The parser's state between chunks. See the [module docs](self).
#[derive(Debug)]
pub struct SseParser {
    max_message_bytes: usize,
    /// The bytes of the line not yet ended.
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends no further line.
    after_cr: bool,
    /// No line ended yet (a byte-order mark may open the stream).
    first_line: bool,
    message: Message,
    /// Bytes held by `message`.
    message_bytes: usize,
}

impl SseParser {
    /// A parser for one stream that refuses messages larger than `max_message_bytes`,
    /// so that a stream which never ends a line cannot take all memory.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            message: Message::default(),
            message_bytes: 0,
        }
    }

    /// Reads `chunk`, pushing each frame it completes onto `frames`. A message still
    /// open at the end of the stream is not a message (the standard drops it too).
    /// After an error the stream cannot be read further: start a new parser on a new
    /// connection.
    pub fn feed(&mut self, mut chunk: &[u8], frames: &mut Vec<Frame>) -> Result<(), TooLarge> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&chunk[..end]);
            self.check_size()?;
            let line = std::mem::take(&mut self.line);
            self.read_line(&line, frames);
            self.line = line;
            self.line.clear();
            let crlf = chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n');
            if chunk[end] == b'\r' && end + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[end + if crlf { 2 } else { 1 }..];
        }
        self.line.extend_from_slice(chunk);
        self.check_size()
    }

    fn check_size(&mut self) -> Result<(), TooLarge> {
        if self.message_bytes + self.line.len() > self.max_message_bytes {
            self.line = Vec::new();
            self.message = Message::default();
            self.message_bytes = 0;
            return Err(TooLarge {
                max_message_bytes: self.max_message_bytes,
            });
        }
        Ok(())
    }

    fn read_line(&mut self, mut line: &[u8], frames: &mut Vec<Frame>) {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            let message = std::mem::take(&mut self.message);
            self.message_bytes = 0;
            if message != Message::default() {
                frames.push(Frame::Message(message));
            }
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "" => frames.push(Frame::Comment(value.to_owned())),
            "data" => {
                self.message_bytes += value.len() + 1;
                match &mut self.message.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.message.data = Some(value.to_owned()),
                }
            }
            "event" => {
                self.message_bytes += value.len();
                self.message.event = Some(value.to_owned());
            }
            "id" if !value.contains('\0') => {
                self.message_bytes += value.len();
                self.message.id = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(millis) = value.parse() {
                    frames.push(Frame::Retry(millis));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut parser = SseParser::new(1 << 20);
        let mut frames = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut frames).unwrap();
        }
        frames
    }

    fn message(id: Option<&str>, event: Option<&str>, data: Option<&str>) -> Frame {
        Frame::Message(Message {
            id: id.map(Into::into),
            event: event.map(Into::into),
            data: data.map(Into::into),
        })
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: ok\n\nretry: 1000\n\nid: 1\ndata: {\"a\":1}\n\n\
        id: 2\r\ndata:x\r\ndata\r\ndata:  y\r\n\r\n\
        id: 9\r\r: keep-alive\n\n\
        event: cursor_expired\ndata: {}\n\n\
        retry: soon\nid: a\0b\nunknown: field\nnocolon\n\n\
        data: \xC3\xA9t\xC3\xA9\n\n\
        id: 10\ndata: cut off";

    fn expected() -> Vec<Frame> {
        vec![
            Frame::Comment("ok".into()),
            Frame::Retry(1000),
            message(Some("1"), None, Some(r#"{"a":1}"#)),
            message(Some("2"), None, Some("x\n\n y")),
            message(Some("9"), None, None),
            Frame::Comment("keep-alive".into()),
            message(None, Some("cursor_expired"), Some("{}")),
            message(None, None, Some("\u{e9}t\u{e9}")),
        ]
    }

    #[test]
    fn fields_comments_and_line_ends_read_as_the_standard_says() {
        assert_eq!(parse(&[STREAM]), expected());
    }

    /// The same frames however the bytes are cut: in two anywhere (through a CRLF, a
    /// UTF-8 character, the byte-order mark) and one byte at a time.
    #[test]
    fn chunk_boundaries_change_nothing() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse(&[a, b"", b]), expected(), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes), expected());
    }

    #[test]
    fn a_message_or_line_past_the_bound_is_refused() {
        let mut frames = Vec::new();
        let mut parser = SseParser::new(16);
        parser.feed(b"id: 1\ndata: 0123", &mut frames).unwrap();
        assert_eq!(
            parser.feed(b"456789", &mut frames),
            Err(TooLarge {
                max_message_bytes: 16
            })
        );
        let mut parser = SseParser::new(16);
        // Each data line holds 3 bytes of the message; the fourth line's 8 bytes pass
        // the bound while it is read.
        for _ in 0..3 {
            parser.feed(b"data: 12\n", &mut frames).unwrap();
        }
        assert!(parser.feed(b"data: 12\n", &mut frames).is_err());
        assert!(frames.is_empty());
        // Messages under the bound pass one after another: the bound is per message.
        let mut parser = SseParser::new(16);
        for _ in 0..100 {
            parser.feed(b"id: 1\ndata: 12345\n\n", &mut frames).unwrap();
        }
        assert_eq!(frames.len(), 100);
    }
}
