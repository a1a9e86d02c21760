//! A session's terminal as leash-entry keeps it and leashd mirrors it: the
//! output ring (what the session printed, by absolute offset, replayed to
//! whoever attaches) and the frames the two exchange over the control
//! connection leashd takes from the container's first process.
//!
//! Nothing here reads or writes: the ring is memory, the frames are bytes.

use std::collections::VecDeque;

/// The output a session keeps for viewers who attach later.
pub const RING_BYTES: usize = 1 << 20;

/// The largest payload of one frame.
pub const FRAME_MAX: usize = 64 << 10;

/// The descriptor of leash-entry (the container's first process) that
/// leashd copies (`pidfd_getfd`) to reach it: one end of a datagram socket
/// pair whose other end only leash-entry reads. No path names it, it is
/// never inherited, and leash-entry is not dumpable, so nothing else in the
/// container can take it; a leashd that restarts takes it again.
pub const CONTROL_FD: i32 = 100;

/// Which of a process's outputs bytes came from (without a terminal the
/// two stay apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, or the terminal.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn code(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    fn of(code: u8) -> Option<Stream> {
        match code {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// The last [`Ring::capacity`] bytes a session printed, each at its
/// absolute offset (bytes since the session started, both streams counted
/// together), so that a viewer can ask for what follows the last byte it
/// saw and learn how much it missed.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    /// (offset of the first byte, stream, bytes), oldest first.
    chunks: VecDeque<(u64, Stream, Vec<u8>)>,
    kept: usize,
    end: u64,
}

/// What a ring holds from an offset on.
#[derive(Debug, PartialEq, Eq)]
pub struct Since<'r> {
    /// The offset of the first byte returned.
    pub start: u64,
    /// Bytes asked for that the ring no longer holds.
    pub lost: u64,
    /// The bytes, in order.
    pub chunks: Vec<(Stream, &'r [u8])>,
}

impl Ring {
    /// An empty ring keeping at most `capacity` bytes (at least one).
    pub fn new(capacity: usize) -> Ring {
        Ring { capacity: capacity.max(1), chunks: VecDeque::new(), kept: 0, end: 0 }
    }

    /// The most it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The offset after the last byte pushed.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.end - self.kept as u64
    }

    /// Appends output; returns the offset of its first byte. The oldest
    /// bytes go when the ring is full (an output larger than the ring
    /// keeps only its end).
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> u64 {
        let at = self.end;
        self.end += bytes.len() as u64;
        let tail = &bytes[bytes.len().saturating_sub(self.capacity)..];
        if tail.is_empty() {
            return at;
        }
        let tail_at = self.end - tail.len() as u64;
        match self.chunks.back_mut() {
            // Small writes of one stream join the last chunk.
            Some((o, s, b)) if *s == stream && *o + b.len() as u64 == tail_at && b.len() < FRAME_MAX => {
                b.extend_from_slice(tail)
            }
            _ => self.chunks.push_back((tail_at, stream, tail.to_vec())),
        }
        self.kept += tail.len();
        while self.kept > self.capacity {
            let excess = self.kept - self.capacity;
            let Some((o, _, b)) = self.chunks.front_mut() else { break };
            if b.len() <= excess {
                self.kept -= b.len();
                self.chunks.pop_front();
            } else {
                b.drain(..excess);
                *o += excess as u64;
                self.kept -= excess;
            }
        }
        at
    }

    /// What the ring holds from `offset` on (an offset past the end: nothing).
    pub fn since(&self, offset: u64) -> Since<'_> {
        let start = offset.clamp(self.start(), self.end);
        let lost = self.start().saturating_sub(offset);
        let chunks = self
            .chunks
            .iter()
            .filter(|(o, _, b)| o + b.len() as u64 > start)
            .map(|(o, s, b)| (*s, &b[start.saturating_sub(*o) as usize..]))
            .collect();
        Since { start, lost, chunks }
    }
}

/// One message between leashd and leash-entry. `proc` 0 is the session's
/// command; others are commands run in the session later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// leashd → entry: send what the ring holds from `from` on, then live output.
    Hello { from: u64 },
    /// leashd → entry: the ring may drop what comes before `offset` (leashd has it).
    Ack { offset: u64 },
    /// leashd → entry: input for a process.
    Input { proc: u32, bytes: Vec<u8> },
    /// leashd → entry: no more input for a process.
    Eof { proc: u32 },
    /// leashd → entry: a process's terminal has a new size.
    Resize { proc: u32, rows: u16, cols: u16 },
    /// leashd → entry: a signal for a process's group.
    Signal { proc: u32, signal: i32 },
    /// leashd → entry: run a command in the session (`env` as `NAME=value`
    /// on top of the session command's; `cwd` empty: the command's).
    Spawn {
        proc: u32,
        tty: bool,
        interactive: bool,
        rows: u16,
        cols: u16,
        argv: Vec<String>,
        env: Vec<String>,
        cwd: String,
    },
    /// leashd → entry: the client of a process went away.
    Hangup { proc: u32 },
    /// entry → leashd: output of a process, at its offset in the ring.
    Output { proc: u32, stream: Stream, offset: u64, bytes: Vec<u8> },
    /// entry → leashd: a process started.
    Spawned { proc: u32, pid: u32 },
    /// entry → leashd: a process could not start (`code` as a shell's: 126, 127).
    SpawnFailed { proc: u32, code: i32, message: String },
    /// entry → leashd: a process ended with this exit code.
    Exit { proc: u32, code: i32 },
}

/// A frame that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than [`FRAME_MAX`].
    TooLong(usize),
    /// A kind this version does not know.
    UnknownKind(u8),
    /// The payload does not match its kind.
    Malformed(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLong(n) => write!(f, "a terminal frame of {n} bytes (at most {FRAME_MAX})"),
            FrameError::UnknownKind(k) => write!(f, "a terminal frame of unknown kind {k}"),
            FrameError::Malformed(k) => write!(f, "a malformed terminal frame of kind {k}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Frame header: kind (1 byte), payload length (u32, little-endian).
const HEADER: usize = 5;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn strings(&mut self, v: &[String]) -> &mut Self {
        self.u32(v.len() as u32);
        for s in v {
            self.bytes(s.as_bytes());
        }
        self
    }
}

struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    /// 0 or 1: a frame has one spelling.
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn strings(&mut self) -> Option<Vec<String>> {
        let n = self.u32()? as usize;
        // Each string takes at least its length: no allocation beyond the payload.
        if n > self.0.len() / 4 {
            return None;
        }
        (0..n).map(|_| self.string()).collect()
    }
}

impl Frame {
    /// The process a frame is about (none for the connection's own).
    pub fn proc(&self) -> Option<u32> {
        match self {
            Frame::Hello { .. } | Frame::Ack { .. } => None,
            Frame::Input { proc, .. }
            | Frame::Eof { proc }
            | Frame::Resize { proc, .. }
            | Frame::Signal { proc, .. }
            | Frame::Spawn { proc, .. }
            | Frame::Hangup { proc }
            | Frame::Output { proc, .. }
            | Frame::Spawned { proc, .. }
            | Frame::SpawnFailed { proc, .. }
            | Frame::Exit { proc, .. } => Some(*proc),
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Ack { .. } => 2,
            Frame::Input { .. } => 3,
            Frame::Eof { .. } => 4,
            Frame::Resize { .. } => 5,
            Frame::Signal { .. } => 6,
            Frame::Spawn { .. } => 7,
            Frame::Hangup { .. } => 8,
            Frame::Output { .. } => 9,
            Frame::Spawned { .. } => 10,
            Frame::SpawnFailed { .. } => 11,
            Frame::Exit { .. } => 12,
        }
    }

    /// Appends the frame to `out`; an error when its payload is longer
    /// than [`FRAME_MAX`] (output and input are sent in pieces below it).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut w = Writer(Vec::new());
        match self {
            Frame::Hello { from } => w.u64(*from),
            Frame::Ack { offset } => w.u64(*offset),
            Frame::Input { proc, bytes } => w.u32(*proc).bytes(bytes),
            Frame::Eof { proc } | Frame::Hangup { proc } => w.u32(*proc),
            Frame::Resize { proc, rows, cols } => w.u32(*proc).u16(*rows).u16(*cols),
            Frame::Signal { proc, signal } => w.u32(*proc).u32(*signal as u32),
            Frame::Spawn { proc, tty, interactive, rows, cols, argv, env, cwd } => w
                .u32(*proc)
                .u8(u8::from(*tty))
                .u8(u8::from(*interactive))
                .u16(*rows)
                .u16(*cols)
                .strings(argv)
                .strings(env)
                .bytes(cwd.as_bytes()),
            Frame::Output { proc, stream, offset, bytes } => w.u32(*proc).u8(stream.code()).u64(*offset).bytes(bytes),
            Frame::Spawned { proc, pid } => w.u32(*proc).u32(*pid),
            Frame::SpawnFailed { proc, code, message } => w.u32(*proc).u32(*code as u32).bytes(message.as_bytes()),
            Frame::Exit { proc, code } => w.u32(*proc).u32(*code as u32),
        };
        if w.0.len() > FRAME_MAX {
            return Err(FrameError::TooLong(w.0.len()));
        }
        out.push(self.kind());
        out.extend_from_slice(&(w.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&w.0);
        Ok(())
    }

    /// Reads a datagram that holds exactly one frame (the control
    /// connection is a datagram socket: a frame never arrives in pieces,
    /// and one cut short by a peer that died is never joined to the next).
    pub fn from_datagram(d: &[u8]) -> Result<Frame, FrameError> {
        match Frame::decode(d)? {
            Some((f, n)) if n == d.len() => Ok(f),
            _ => Err(FrameError::Malformed(d.first().copied().unwrap_or(0))),
        }
    }

    /// Reads the first frame of `buf`: the frame and the bytes it took, or
    /// None when `buf` does not hold a whole frame yet.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_le_bytes(buf[1..HEADER].try_into().expect("4 bytes")) as usize;
        if len > FRAME_MAX {
            return Err(FrameError::TooLong(len));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let mut r = Reader(&buf[HEADER..HEADER + len]);
        let frame = (|| {
            Some(match kind {
                1 => Frame::Hello { from: r.u64()? },
                2 => Frame::Ack { offset: r.u64()? },
                3 => Frame::Input { proc: r.u32()?, bytes: r.bytes()? },
                4 => Frame::Eof { proc: r.u32()? },
                5 => Frame::Resize { proc: r.u32()?, rows: r.u16()?, cols: r.u16()? },
                6 => Frame::Signal { proc: r.u32()?, signal: r.u32()? as i32 },
                7 => Frame::Spawn {
                    proc: r.u32()?,
                    tty: r.bool()?,
                    interactive: r.bool()?,
                    rows: r.u16()?,
                    cols: r.u16()?,
                    argv: r.strings()?,
                    env: r.strings()?,
                    cwd: r.string()?,
                },
                8 => Frame::Hangup { proc: r.u32()? },
                9 => {
                    Frame::Output { proc: r.u32()?, stream: Stream::of(r.u8()?)?, offset: r.u64()?, bytes: r.bytes()? }
                }
                10 => Frame::Spawned { proc: r.u32()?, pid: r.u32()? },
                11 => Frame::SpawnFailed { proc: r.u32()?, code: r.u32()? as i32, message: r.string()? },
                12 => Frame::Exit { proc: r.u32()?, code: r.u32()? as i32 },
                _ => return None,
            })
        })();
        match frame {
            // A payload longer than its kind's fields is malformed too.
            Some(f) if r.0.is_empty() => Ok(Some((f, HEADER + len))),
            _ if !(1..=12).contains(&kind) => Err(FrameError::UnknownKind(kind)),
            _ => Err(FrameError::Malformed(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Since<'_>) -> Vec<u8> {
        s.chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes_at_their_offsets() {
        let mut r = Ring::new(10);
        assert_eq!(r.push(Stream::Stdout, b"hello "), 0);
        assert_eq!(r.push(Stream::Stderr, b"err "), 6);
        assert_eq!((r.start(), r.end()), (0, 10));
        assert_eq!(text(&r.since(0)), b"hello err ");
        // Full: the oldest bytes go, part of a chunk if need be.
        assert_eq!(r.push(Stream::Stdout, b"world"), 10);
        assert_eq!((r.start(), r.end()), (5, 15));
        let s = r.since(0);
        assert_eq!((s.start, s.lost), (5, 5));
        assert_eq!(s.chunks, vec![(Stream::Stdout, &b" "[..]), (Stream::Stderr, b"err "), (Stream::Stdout, b"world")]);
        // From the middle of a chunk; at the end; past it.
        assert_eq!(text(&r.since(8)), b"r world");
        assert_eq!(r.since(8).lost, 0);
        assert_eq!(r.since(15).chunks, vec![]);
        assert_eq!((r.since(99).start, r.since(99).lost), (15, 0));
    }

    #[test]
    fn an_output_larger_than_the_ring_keeps_its_end() {
        let mut r = Ring::new(4);
        r.push(Stream::Stdout, b"ab");
        assert_eq!(r.push(Stream::Stdout, b"0123456789"), 2);
        assert_eq!((r.start(), r.end()), (8, 12));
        assert_eq!(text(&r.since(0)), b"6789");
        assert_eq!(r.since(0).lost, 8);
        r.push(Stream::Stdout, b"");
        assert_eq!(r.end(), 12);
    }

    #[test]
    fn the_ring_never_holds_more_than_its_capacity() {
        let mut r = Ring::new(1000);
        let mut all = Vec::new();
        for i in 0..5000u32 {
            let piece: Vec<u8> = (0..(i % 37) as u8).map(|b| b.wrapping_add(i as u8)).collect();
            let stream = if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout };
            assert_eq!(r.push(stream, &piece), all.len() as u64);
            all.extend_from_slice(&piece);
            assert!(r.end() - r.start() <= 1000);
            assert_eq!(r.end(), all.len() as u64);
            let s = r.since(0);
            assert_eq!(text(&s), &all[s.start as usize..]);
            assert_eq!(s.lost, s.start);
        }
    }

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let frames = vec![
            Frame::Hello { from: 42 },
            Frame::Ack { offset: u64::MAX },
            Frame::Input { proc: 0, bytes: b"\x10\x11ls\r".to_vec() },
            Frame::Eof { proc: 3 },
            Frame::Resize { proc: 0, rows: 50, cols: 200 },
            Frame::Signal { proc: 1, signal: 2 },
            Frame::Spawn {
                proc: 7,
                tty: true,
                interactive: false,
                rows: 24,
                cols: 80,
                argv: vec!["sh".into(), "-c".into(), "echo é".into()],
                env: vec!["A=1".into()],
                cwd: "/work".into(),
            },
            Frame::Hangup { proc: 7 },
            Frame::Output { proc: 0, stream: Stream::Stderr, offset: 9, bytes: vec![0; 1000] },
            Frame::Spawned { proc: 7, pid: 1234 },
            Frame::SpawnFailed { proc: 7, code: 127, message: "nope: not found".into() },
            Frame::Exit { proc: 0, code: -1 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        // Fed a byte at a time, as a stream socket may hand them over.
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for b in wire {
            buf.push(b);
            while let Some((f, n)) = Frame::decode(&buf).unwrap() {
                got.push(f);
                buf.drain(..n);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_named_not_trusted() {
        let too_long = Frame::Input { proc: 0, bytes: vec![0; FRAME_MAX] };
        assert!(matches!(too_long.encode(&mut Vec::new()), Err(FrameError::TooLong(_))));
        let mut header = vec![3];
        header.extend_from_slice(&((FRAME_MAX + 1) as u32).to_le_bytes());
        assert_eq!(Frame::decode(&header), Err(FrameError::TooLong(FRAME_MAX + 1)));
        assert_eq!(Frame::decode(&[99, 0, 0, 0, 0]), Err(FrameError::UnknownKind(99)));
        // Too short for its kind, too long for it, a length beyond the payload.
        assert_eq!(Frame::decode(&[1, 2, 0, 0, 0, 1, 2]), Err(FrameError::Malformed(1)));
        assert_eq!(Frame::decode(&[4, 5, 0, 0, 0, 1, 0, 0, 0, 9]), Err(FrameError::Malformed(4)));
        assert_eq!(Frame::decode(&[3, 8, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]), Err(FrameError::Malformed(3)));
        // A count of strings the payload cannot hold is refused before any allocation.
        let mut spawn = vec![7];
        let payload: Vec<u8> =
            [0u32.to_le_bytes().as_slice(), &[1, 0], &[24, 0, 80, 0], &u32::MAX.to_le_bytes()].concat();
        spawn.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        spawn.extend_from_slice(&payload);
        assert_eq!(Frame::decode(&spawn), Err(FrameError::Malformed(7)));
        assert_eq!(Frame::decode(&[1, 8, 0]), Ok(None), "a header still arriving");
    }

    #[test]
    fn a_datagram_holds_one_whole_frame() {
        let mut d = Vec::new();
        Frame::Exit { proc: 5, code: 3 }.encode(&mut d).unwrap();
        assert_eq!(Frame::from_datagram(&d), Ok(Frame::Exit { proc: 5, code: 3 }));
        // Cut short, or followed by more: refused, never waited for.
        assert_eq!(Frame::from_datagram(&d[..d.len() - 1]), Err(FrameError::Malformed(12)));
        let mut two = d.clone();
        two.extend_from_slice(&d);
        assert_eq!(Frame::from_datagram(&two), Err(FrameError::Malformed(12)));
        assert_eq!(Frame::from_datagram(&[]), Err(FrameError::Malformed(0)));
    }
}
