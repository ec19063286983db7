//! The on-disk queue. One file per message; nothing accepted lives only in memory.
//!
//! ```text
//! SPOOL/tmp/ID      being written; removed at start (no client got a 250 for it)
//! SPOOL/tmp/free.ID an emptied file of delivered message ID, for a new one to reuse
//! SPOOL/queue/ID    accepted: written, fsynced, renamed here, directory fsynced
//! SPOOL/failed/ID   delivery failed for good (5xx or too old); the reasons are inside
//! SPOOL/corrupt/ID  a file that could not be read, moved aside for a human
//! ```
//!
//! A message file is a text envelope, a blank line, the content (CRLF lines, not
//! dot-stuffed, exactly `size` octets), then delivery records appended one line each
//! as the relay works (like Postfix's queue files, the content is never rewritten):
//!
//! ```text
//! smtp-relayd-spool 1
//! created 1796077564
//! client 192.0.2.7
//! helo cam1
//! body 8bitmime
//! smtputf8 no
//! sender <cam1@example.net>
//! rcpt <ops@example.com>
//! size 00000000000000000123
//!
//! <content>
//! D 0 1796077570 250 2.0.0 Ok: queued as 4Xyz      recipient 0 delivered
//!                           (each record ends with TAB LF; one without is torn, ignored)
//! F 1 1796077570 550 5.1.1 no such user            recipient 1 failed for good
//! T 1796077570 1796077630 451 4.3.0 try later       an attempt deferred; next try
//! X 1796077570 message expired: 451 4.3.0 ...      the message failed as a whole
//! R 1796077600                                      sent back to the queue: failed recipients are retried
//! ```

mod dirsync;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use dirsync::DirSync;

const MAGIC: &str = "smtp-relayd-spool 1";
/// The size field is written as fixed-width digits, then filled in at commit.
const SIZE_WIDTH: usize = 20;
/// An envelope larger than this is not ours (100 recipients of 256 octets fit well).
const MAX_HEADER: u64 = 64 * 1024;
/// Delivery records read back at most (years of retries fit).
const MAX_RECORDS: u64 = 1024 * 1024;

/// A queue id: microseconds since the epoch, a per-process counter and the pid, in
/// fixed-width hex, so ids sort by arrival and never repeat.
pub type QueueId = heapless::String<24>;

pub fn valid_id(s: &str) -> bool {
    s.len() == 23
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The envelope stored in front of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub created: u64,
    pub client: String,
    pub helo: String,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
}

/// The state of one recipient, from the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    Failed,
}

/// A queued message as the relay reads it.
#[derive(Debug)]
pub struct Message {
    pub id: QueueId,
    pub envelope: Envelope,
    pub size: u64,
    /// Where the content starts in the file.
    pub content_offset: u64,
    pub rcpt_state: Vec<RcptState>,
    /// Delivery attempts so far (since the last `retry-failed`), whatever their end.
    pub attempts: u32,
    /// The time of the last attempt's records, to count each attempt once.
    last_attempt: Option<u64>,
    /// The next try recorded by the last deferral, if any.
    pub next_try: Option<u64>,
    pub last_reply: Option<String>,
    /// The content has lines over 998 octets (an `L` record): it is re-encoded on
    /// its way out (`crate::longlines`).
    pub long_lines: bool,
    /// The file it was read from, kept open for the content: no second lookup in
    /// `queue/` (whose directory lock every commit and removal also takes).
    file: File,
}

impl Message {
    /// The content: the file it was read from (a second descriptor), positioned at
    /// the content; read `size` octets from it.
    pub fn open_content(&self) -> io::Result<io::Take<File>> {
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(self.content_offset))?;
        Ok(f.take(self.size))
    }
}

/// Why a spool file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It is gone (delivered or deleted meanwhile).
    Missing,
    Io(io::Error),
    /// Not a message file of ours, or damaged.
    Corrupt(String),
}

pub struct Spool {
    root: PathBuf,
    queue_sync: DirSync,
    pid: u32,
    counter: AtomicU32,
    /// Emptied files of delivered messages, `tmp/free.ID`, that new messages reuse: an
    /// inode is not freed and allocated again per message. (ext4 without a journal,
    /// common on flash, scans past every inode freed in the last seconds for each new
    /// one: at a few thousand messages a second that was a fifth of the relay's CPU.)
    /// A file is named after the message it last held, so names never repeat.
    pool: std::sync::Mutex<Vec<QueueId>>,
    /// 0 for a spool opened beside the daemon (`attach`): the daemon owns `tmp/free.*`.
    pool_max: usize,
}

/// How many emptied files the daemon keeps for reuse.
const POOL_MAX: usize = 64;

/// True when an error means the disk (or a quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A daemon's hold on its spool (`SPOOL/daemon.lock`, an exclusive lock that the
/// kernel drops with the process, so a daemon that died leaves nothing stale).
/// Only one daemon may serve a spool: a second one would clear the first one's
/// `tmp/` and take over its control socket.
#[derive(Debug)]
pub struct DaemonLock(#[allow(dead_code)] File);

impl DaemonLock {
    /// Takes the lock, or says which process holds it. Nothing else is touched.
    pub fn take(root: &Path) -> Result<DaemonLock, String> {
        let path = root.join("daemon.lock");
        let fail = |e: io::Error| format!("cannot lock {}: {e}", path.display());
        match fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create spool {}: {e}", root.display())),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(format!(
                    "spool {} is in use by another smtp-relayd (pid {}); stop it first, or give this one a spool of its own",
                    root.display(),
                    pid.trim()
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        file.set_len(0).map_err(fail)?;
        writeln!(file, "{}", std::process::id()).map_err(fail)?;
        Ok(DaemonLock(file))
    }
}

impl Spool {
    /// Opens the spool for the daemon: creates what is missing and clears `tmp/`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let mut spool = Self::attach(root)?;
        spool.pool_max = POOL_MAX;
        // What is in tmp/ was never acknowledged to a client; it is safe to drop.
        for entry in fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("spool: cannot remove stale {}: {e}", path.display());
            }
        }
        Ok(spool)
    }

    /// Opens the spool beside a daemon that may be running (sendmail, queue tools):
    /// nothing in `tmp/` is touched, since it may be a message being received.
    pub fn attach(root: &Path) -> io::Result<Spool> {
        for sub in ["", "tmp", "queue", "failed", "corrupt"] {
            let dir = root.join(sub);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
        }
        Ok(Spool {
            root: root.to_path_buf(),
            queue_sync: DirSync::new(root.join("queue")),
            pid: std::process::id(),
            counter: AtomicU32::new(0),
            pool: std::sync::Mutex::new(Vec::new()),
            pool_max: 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn queue_path(&self, id: &str) -> PathBuf {
        self.root.join("queue").join(id)
    }

    pub fn failed_path(&self, id: &str) -> PathBuf {
        self.root.join("failed").join(id)
    }

    pub fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let mut id = QueueId::new();
        use std::fmt::Write as _;
        let _ = write!(
            id,
            "{:013X}{:04X}{:06X}",
            micros & 0x000F_FFFF_FFFF_FFFF,
            n,
            self.pid & 0xff_ffff
        );
        id
    }

    /// Starts a message file in `tmp/` (an emptied one from the pool, or a new one)
    /// and writes its envelope.
    pub fn create(&self, id: &str, env: &Envelope) -> io::Result<Writer> {
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .and_then(|id| {
                let path = self.free_path(&id);
                let file = OpenOptions::new().write(true).open(&path).ok()?;
                Some((path, file))
            });
        let (tmp, file) = match reused {
            Some(reused) => reused,
            None => {
                let tmp = self.root.join("tmp").join(id);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                (tmp, file)
            }
        };
        let mut head = String::with_capacity(256);
        use std::fmt::Write as _;
        let _ = write!(
            head,
            "{MAGIC}\ncreated {}\nclient {}\nhelo {}\nbody {}\nsmtputf8 {}\nsender <{}>\n",
            env.created,
            env.client,
            env.helo,
            if env.eight_bit { "8bitmime" } else { "7bit" },
            if env.smtputf8 { "yes" } else { "no" },
            env.sender
        );
        for r in &env.recipients {
            let _ = writeln!(head, "rcpt <{r}>");
        }
        head.push_str("size ");
        let size_offset = head.len() as u64;
        let _ = write!(head, "{:0w$}\n\n", 0, w = SIZE_WIDTH);
        let mut w = Writer {
            // Gathers the envelope, the trace line and a small message into one
            // write; the session hands over bodies in pieces of up to 64 KiB, which
            // pass straight through.
            file: io::BufWriter::with_capacity(8 * 1024, file),
            tmp,
            size_offset,
            written: 0,
            long_lines: false,
            committed: false,
        };
        if let Err(e) = w.file.write_all(head.as_bytes()) {
            w.abort();
            return Err(e);
        }
        Ok(w)
    }

    fn free_path(&self, id: &str) -> PathBuf {
        self.root.join("tmp").join(format!("free.{id}"))
    }

    /// Whether the spool can take a message of `size` octets: free space of at least
    /// one and a half times that, as Postfix's smtpd asks at MAIL ... SIZE= (the rest
    /// is room for the envelope, the records and the other messages arriving). When
    /// the free space cannot be read the answer is yes: the write will tell.
    pub fn has_room(&self, size: u64) -> bool {
        crate::privileges::free_space(&self.root)
            .map_or(true, |free| free >= size.saturating_add(size / 2))
    }

    /// Makes a written message durable and visible to the relay. Only after this
    /// returns may the client be told 250.
    /// On an error nothing stays queued (the client is told 4xx and sends again).
    pub fn commit(&self, id: &str, mut w: Writer) -> io::Result<()> {
        if w.long_lines {
            // After the content, like the delivery records: an older reader skips it.
            w.file.write_all(b"L\t\n")?;
        }
        w.file.flush()?;
        let file = w.file.get_ref();
        let size = format!("{:0w$}", w.written, w = SIZE_WIDTH);
        file.write_all_at(size.as_bytes(), w.size_offset)?;
        file.sync_data()?;
        let queued = self.queue_path(id);
        fs::rename(&w.tmp, &queued)?;
        w.committed = true;
        if let Err(e) = self.queue_sync.sync() {
            let _ = fs::remove_file(&queued);
            return Err(e);
        }
        Ok(())
    }

    /// The ids in `failed/`, oldest first.
    pub fn list_failed(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = fs::read_dir(self.root.join("failed"))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let name = name.to_str().filter(|n| valid_id(n))?;
                QueueId::try_from(name).ok()
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a message from `queue/` or `failed/` (the caller makes sure no delivery
    /// of it is in flight). `Ok(false)`: there was no such message.
    pub fn delete(&self, id: &str) -> io::Result<bool> {
        for path in [self.queue_path(id), self.failed_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {
                    DirSync::sync_dir(path.parent().expect("in a directory"))?;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Puts a failed message back in the queue; its failed recipients are tried again.
    /// `Ok(false)`: there was no such failed message.
    pub fn retry_failed(&self, id: &str, now: u64) -> io::Result<bool> {
        let from = self.failed_path(id);
        match self.append(&from, &format!("R {now}")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            r => r?,
        }
        fs::rename(&from, self.queue_path(id))?;
        self.queue_sync.sync()?;
        DirSync::sync_dir(&self.root.join("failed"))?;
        Ok(true)
    }

    /// The ids in `queue/`, oldest first.
    pub fn list_queue(&self) -> io::Result<Vec<QueueId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.root.join("queue"))? {
            let name = entry?.file_name();
            match name.to_str() {
                Some(n) if valid_id(n) => ids.push(QueueId::try_from(n).unwrap_or_default()),
                _ => {
                    log::warn!(
                        "spool: moving unknown file queue/{} aside",
                        name.to_string_lossy()
                    );
                    let _ = self.move_aside_name(&name.to_string_lossy());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads a queued message's envelope and delivery records.
    pub fn read(&self, id: &str) -> Result<Message, ReadError> {
        self.read_path(&self.queue_path(id), id)
    }

    /// Reads a message in `failed/`.
    pub fn read_failed(&self, id: &str) -> Result<Message, ReadError> {
        self.read_path(&self.failed_path(id), id)
    }

    fn read_path(&self, path: &Path, id: &str) -> Result<Message, ReadError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(e) => return Err(ReadError::Io(e)),
        };
        let len = file.metadata().map_err(ReadError::Io)?.len();
        let mut r = BufReader::new(file);
        let bad = |what: &str| ReadError::Corrupt(what.to_string());
        let mut line = String::new();
        let mut offset = 0u64;
        let mut next = |r: &mut BufReader<File>, line: &mut String| -> Result<(), ReadError> {
            line.clear();
            let n = r
                .by_ref()
                .take(MAX_HEADER)
                .read_line(line)
                .map_err(|_| bad("unreadable envelope"))?;
            offset += n as u64;
            if !line.ends_with('\n') || offset > MAX_HEADER {
                return Err(bad("truncated envelope"));
            }
            line.pop();
            Ok(())
        };
        next(&mut r, &mut line)?;
        if line != MAGIC {
            return Err(bad("not a smtp-relayd spool file"));
        }
        let mut env = Envelope {
            created: 0,
            client: String::new(),
            helo: String::new(),
            eight_bit: false,
            smtputf8: false,
            sender: String::new(),
            recipients: Vec::new(),
        };
        let mut size = None;
        loop {
            next(&mut r, &mut line)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| bad("bad envelope line"))?;
            let path = || {
                v.strip_prefix('<')
                    .and_then(|v| v.strip_suffix('>'))
                    .map(str::to_string)
                    .ok_or_else(|| bad("bad address"))
            };
            match k {
                "created" => env.created = v.parse().map_err(|_| bad("bad created"))?,
                "client" => env.client = v.to_string(),
                "helo" => env.helo = v.to_string(),
                "body" => env.eight_bit = v == "8bitmime",
                "smtputf8" => env.smtputf8 = v == "yes",
                "sender" => env.sender = path()?,
                "rcpt" => env.recipients.push(path()?),
                "size" => size = Some(v.parse::<u64>().map_err(|_| bad("bad size"))?),
                _ => return Err(bad("unknown envelope field")),
            }
        }
        let size = size.ok_or_else(|| bad("no size"))?;
        if env.recipients.is_empty() {
            return Err(bad("no recipients"));
        }
        let content_offset = offset;
        if content_offset + size > len {
            return Err(bad("content shorter than its size"));
        }
        // The delivery records after the content.
        let mut file = r.into_inner();
        file.seek(SeekFrom::Start(content_offset + size))
            .map_err(ReadError::Io)?;
        let mut records = String::new();
        (&mut file)
            .take(MAX_RECORDS)
            .read_to_string(&mut records)
            .map_err(|_| bad("unreadable records"))?;
        let mut msg = Message {
            id: QueueId::try_from(id).map_err(|_| bad("bad id"))?,
            rcpt_state: vec![RcptState::Pending; env.recipients.len()],
            envelope: env,
            size,
            content_offset,
            attempts: 0,
            last_attempt: None,
            next_try: None,
            last_reply: None,
            long_lines: false,
            file,
        };
        // A record cut short by a crash has no TAB LF: it never happened.
        for rec in records.split('\n').filter_map(|r| r.strip_suffix('\t')) {
            apply_record(&mut msg, rec);
        }
        Ok(msg)
    }

    /// Appends one delivery record and makes it durable.
    /// A record ends with TAB LF (values never hold a TAB), so one torn by a crash is
    /// known as such, even after a later record was appended behind it.
    fn append(&self, path: &Path, record: &str) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).read(true).open(path)?;
        let len = f.metadata()?.len();
        let mut last = [0u8; 1];
        let mut line = String::with_capacity(record.len() + 3);
        if len > 0 && f.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            line.push('\n');
        }
        line.push_str(&sanitize(record));
        line.push_str("\t\n");
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }

    pub fn record_delivered(&self, id: &str, rcpt: usize, now: u64, reply: &str) -> io::Result<()> {
        self.append(&self.queue_path(id), &format!("D {rcpt} {now} {reply}"))
    }

    pub fn record_failed(&self, id: &str, rcpt: usize, now: u64, reply: &str) -> io::Result<()> {
        self.append(&self.queue_path(id), &format!("F {rcpt} {now} {reply}"))
    }

    pub fn record_deferred(&self, id: &str, now: u64, next: u64, reply: &str) -> io::Result<()> {
        self.append(&self.queue_path(id), &format!("T {now} {next} {reply}"))
    }

    /// Delivery is complete for every recipient: the message leaves the queue.
    /// The directory is not fsynced for this (as Postfix does not): after a power
    /// loss the file may come back and be sent again, which at-least-once delivery
    /// allows; the sync would cost every delivery a disk flush. (The next commit's
    /// fsync of `queue/` makes the removal durable with it.)
    ///
    /// The file is moved to the pool and emptied there (first moved, so that a crash
    /// between the two leaves a full file in `tmp/`, which the next start clears, and
    /// never an empty one in `queue/`); when the pool is full it is unlinked.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let path = self.queue_path(id);
        if self.pool.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.pool_max {
            return fs::remove_file(path);
        }
        let free = self.free_path(id);
        fs::rename(&path, &free)?;
        match OpenOptions::new()
            .write(true)
            .open(&free)
            .and_then(|f| f.set_len(0))
        {
            Ok(()) => self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.clone()),
            Err(_) => {
                let _ = fs::remove_file(&free);
            }
        }
        Ok(())
    }

    /// Moves a message to `failed/` with the reason recorded in it.
    pub fn move_to_failed(&self, id: &str, now: u64, reason: &str) -> io::Result<()> {
        self.append(&self.queue_path(id), &format!("X {now} {reason}"))?;
        fs::rename(self.queue_path(id), self.failed_path(id))?;
        DirSync::sync_dir(&self.root.join("failed"))?;
        self.queue_sync.sync()
    }

    /// Moves an unreadable file out of the queue so it is neither retried nor lost.
    pub fn move_aside(&self, id: &str) -> io::Result<()> {
        self.move_aside_name(id)
    }

    fn move_aside_name(&self, name: &str) -> io::Result<()> {
        let to = self.root.join("corrupt").join(name);
        fs::rename(self.root.join("queue").join(name), to)?;
        self.queue_sync.sync()
    }
}

/// Records and envelope values stay on one line of printable text.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The records of one attempt share its time: an attempt is counted once, at the
/// first record with a new time (delivered, failed and deferred ones alike).
fn count_attempt(msg: &mut Message, time: &str) {
    let t = time.parse().ok();
    if t.is_none() || t != msg.last_attempt {
        msg.attempts += 1;
        msg.last_attempt = t;
    }
}

fn apply_record(msg: &mut Message, rec: &str) {
    let mut f = rec.splitn(4, ' ');
    match (f.next(), f.next(), f.next(), f.next()) {
        (Some("D" | "F"), Some(idx), Some(time), reply) => {
            count_attempt(msg, time);
            if let Some(state) = idx
                .parse::<usize>()
                .ok()
                .and_then(|i| msg.rcpt_state.get_mut(i))
            {
                *state = if rec.starts_with('D') {
                    RcptState::Delivered
                } else {
                    RcptState::Failed
                };
            }
            if rec.starts_with('F') {
                msg.last_reply = reply.map(str::to_string);
            }
        }
        (Some("R"), ..) => {
            for state in msg
                .rcpt_state
                .iter_mut()
                .filter(|s| **s == RcptState::Failed)
            {
                *state = RcptState::Pending;
            }
            msg.attempts = 0;
            msg.last_attempt = None;
            msg.next_try = None;
        }
        (Some("L"), None, ..) => msg.long_lines = true,
        (Some("T"), Some(time), Some(next), reply) => {
            count_attempt(msg, time);
            msg.next_try = next.parse().ok();
            msg.last_reply = reply.map(str::to_string);
        }
        _ => {}
    }
}

/// A message being written to `tmp/`. Dropped without `commit`, it is removed.
pub struct Writer {
    file: io::BufWriter<File>,
    tmp: PathBuf,
    size_offset: u64,
    written: u64,
    long_lines: bool,
    committed: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Writer {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    /// Octets of content written so far (the message's `size` once committed).
    pub fn size(&self) -> u64 {
        self.written
    }

    /// The content has a line over 998 octets: `commit` records it (`L`), so that the
    /// relay re-encodes the message as it sends it, without reading it twice first.
    pub fn set_long_lines(&mut self) {
        self.long_lines = true;
    }

    /// Drops the message (the file is removed by `Drop`).
    pub fn abort(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("smtp-relayd-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn env() -> Envelope {
        Envelope {
            created: 1_796_077_564,
            client: "192.0.2.7".into(),
            helo: "cam1".into(),
            eight_bit: true,
            smtputf8: false,
            sender: String::new(),
            recipients: vec!["a@b.c".into(), "d@e.f".into()],
        }
    }

    fn queue(spool: &Spool, content: &[u8]) -> QueueId {
        let id = spool.new_id();
        let mut w = spool.create(&id, &env()).unwrap();
        w.write(content).unwrap();
        spool.commit(&id, w).unwrap();
        id
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_removed_file_is_emptied_and_reused_by_the_next_message() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir("pool");
        let spool = Spool::open(&dir).unwrap();
        let big = vec![b'x'; 100_000];
        let first = queue(&spool, &big);
        let ino = fs::metadata(spool.queue_path(&first)).unwrap().ino();
        spool
            .record_deferred(&first, 10, 70, "451 4.3.0 later")
            .unwrap();
        spool.remove(&first).unwrap();
        assert!(spool.read(&first).is_err());
        // Emptied at once: nothing of the delivered message stays on disk.
        assert_eq!(names(&dir.join("tmp")), [format!("free.{first}")]);
        assert_eq!(
            fs::metadata(dir.join(format!("tmp/free.{first}")))
                .unwrap()
                .len(),
            0
        );

        // The next, shorter message gets the same inode and nothing of the old one.
        let second = queue(&spool, b"Subject: y\r\n\r\nshort\r\n");
        assert_eq!(fs::metadata(spool.queue_path(&second)).unwrap().ino(), ino);
        assert!(names(&dir.join("tmp")).is_empty());
        let m = spool.read(&second).unwrap();
        assert_eq!((m.size, m.attempts), (21, 0));
        assert_eq!(m.rcpt_state, [RcptState::Pending, RcptState::Pending]);
        let mut content = Vec::new();
        m.open_content().unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, b"Subject: y\r\n\r\nshort\r\n");
        let mut whole = Vec::new();
        File::open(spool.queue_path(&second))
            .unwrap()
            .read_to_end(&mut whole)
            .unwrap();
        assert!(!whole.contains(&b'x') && !whole.windows(5).any(|w| w == b"later"));

        // An aborted message does not return its file to the pool.
        spool.remove(&second).unwrap();
        let w = spool.create(&spool.new_id(), &env()).unwrap();
        w.abort();
        assert!(names(&dir.join("tmp")).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_pool_is_bounded_cleared_at_start_and_only_the_daemons() {
        let dir = temp_dir("poolmax");
        let spool = Spool::open(&dir).unwrap();
        let ids: Vec<QueueId> = (0..POOL_MAX + 3).map(|_| queue(&spool, b"x\r\n")).collect();
        for id in &ids {
            spool.remove(id).unwrap();
        }
        assert!(spool.list_queue().unwrap().is_empty());
        assert_eq!(names(&dir.join("tmp")).len(), POOL_MAX);
        // A spool beside the daemon (sendmail, queue tools) never pools, and never
        // takes the daemon's free files.
        let beside = Spool::attach(&dir).unwrap();
        let id = queue(&beside, b"x\r\n");
        assert_eq!(names(&dir.join("tmp")).len(), POOL_MAX);
        beside.remove(&id).unwrap();
        assert_eq!(names(&dir.join("tmp")).len(), POOL_MAX);
        drop(spool);
        Spool::open(&dir).unwrap();
        assert!(names(&dir.join("tmp")).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_commit_read_records_fail() {
        let dir = temp_dir("spool");
        let spool = Spool::open(&dir).unwrap();
        let id = spool.new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(id, spool.new_id());
        let mut w = spool.create(&id, &env()).unwrap();
        w.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        spool.commit(&id, w).unwrap();
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        assert_eq!(spool.list_queue().unwrap(), vec![id.clone()]);

        let m = spool.read(&id).unwrap();
        assert_eq!(m.envelope, env());
        assert_eq!(m.size, 20);
        let mut content = Vec::new();
        m.open_content().unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(m.rcpt_state, [RcptState::Pending, RcptState::Pending]);

        spool.record_delivered(&id, 0, 10, "250 2.0.0 ok").unwrap();
        spool
            .record_deferred(&id, 10, 70, "451 4.3.0 later\r\nX injected")
            .unwrap();
        // A record torn by a crash (no newline) is ignored.
        OpenOptions::new()
            .append(true)
            .open(spool.queue_path(&id))
            .unwrap()
            .write_all(b"D 1 11 250")
            .unwrap();
        let m = spool.read(&id).unwrap();
        assert_eq!(m.rcpt_state, [RcptState::Delivered, RcptState::Pending]);
        assert_eq!((m.attempts, m.next_try), (1, Some(70)));
        assert_eq!(m.last_reply.as_deref(), Some("451 4.3.0 later??X injected"));

        spool.record_failed(&id, 1, 19, "550 5.1.1 no").unwrap();
        spool.move_to_failed(&id, 20, "550 5.1.1 no").unwrap();
        assert!(spool.list_queue().unwrap().is_empty());
        assert_eq!(spool.list_failed().unwrap(), vec![id.clone()]);
        assert_eq!(
            spool.read_failed(&id).unwrap().rcpt_state,
            [RcptState::Delivered, RcptState::Failed]
        );
        let text = fs::read_to_string(spool.failed_path(&id)).unwrap();
        assert!(
            text.contains("\nD 1 11 250\nF 1 19 550 5.1.1 no\t\nX 20 550 5.1.1 no\t\n"),
            "{text}"
        );
        // Retry: back in the queue, the failed recipient pending again, the torn
        // record still torn (recipient 1 is not taken as delivered).
        assert!(spool.retry_failed(&id, 30).unwrap());
        assert!(!spool.retry_failed(&id, 30).unwrap());
        let m = spool.read(&id).unwrap();
        assert_eq!(m.rcpt_state, [RcptState::Delivered, RcptState::Pending]);
        assert_eq!(m.attempts, 0);
        assert!(spool.delete(&id).unwrap());
        assert!(!spool.delete(&id).unwrap());
        assert!(spool.list_queue().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_reported_not_trusted() {
        let dir = temp_dir("corrupt");
        let spool = Spool::open(&dir).unwrap();
        let id = spool.new_id();
        let mut w = spool.create(&id, &env()).unwrap();
        w.write(b"0123456789").unwrap();
        spool.commit(&id, w).unwrap();
        let path = spool.queue_path(&id);
        let good = fs::read(&path).unwrap();
        // Truncated content, garbage, and an empty file are all Corrupt, never a panic.
        for bad in [&good[..good.len() - 3], b"\x00\xff junk", b"", &good[..30]] {
            fs::write(&path, bad).unwrap();
            assert!(
                matches!(spool.read(&id), Err(ReadError::Corrupt(_))),
                "{bad:?}"
            );
        }
        spool.move_aside(&id).unwrap();
        assert!(dir.join("corrupt").join(&*id).exists());
        assert!(matches!(spool.read(&id), Err(ReadError::Missing)));
        // An unknown name in queue/ is moved aside when listing.
        fs::write(dir.join("queue").join("junk"), b"x").unwrap();
        assert!(spool.list_queue().unwrap().is_empty());
        assert!(dir.join("corrupt").join("junk").exists());
        // Uncommitted writers leave nothing after a restart.
        let w = spool.create(&spool.new_id(), &env()).unwrap();
        drop(w);
        let _ = Spool::open(&dir).unwrap();
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
