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
//! as the relay works (like Postfix's queue files, the content is never rewritten).
//! The format, as types with their parse and emit, is in `format`.

mod dirsync;
pub mod format;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use dirsync::DirSync;
pub use format::{Corrupt, Envelope, QueueId, Record};
use format::{MAX_HEADER, SIZE_WIDTH};

/// Delivery records read back at most (years of retries fit).
const MAX_RECORDS: u64 = 1024 * 1024;

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
    /// Each recipient's last final reply (delivered or failed), from its records.
    pub replies: Vec<Option<String>>,
    /// A failure notice is owed (`O`) and not yet queued (`N`).
    pub notice_owed: bool,
    /// A delay warning was queued for it (`W`).
    pub warned: bool,
    /// Its last move by an `X` or `R` record, if any.
    pub last_move: Option<Move>,
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
    Corrupt(Corrupt),
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
    ///
    /// Each entry: the id, the ticket of its removal from `queue/`, and whether the
    /// file is emptied yet. A file is emptied and reused only once a sync of `queue/`
    /// (every commit makes one) covers that ticket: before, a power cut could bring
    /// back `queue/ID`, which must then hold the delivered message whole, not an
    /// empty file or another message. Only files of up to `POOL_FILE_MAX` are kept.
    pool: std::sync::Mutex<std::collections::VecDeque<(QueueId, u64, bool)>>,
    /// 0 for a spool opened beside the daemon (`attach`): the daemon owns `tmp/free.*`.
    pool_max: usize,
}

/// How many emptied files the daemon keeps for reuse.
const POOL_MAX: usize = 64;
/// A delivered file larger than this is unlinked, not pooled: the pool is for the
/// small messages that come many a second, and it holds a file whole until a sync
/// covers its removal.
const POOL_FILE_MAX: u64 = 64 * 1024;

/// Fsyncs the directory that holds `path` (after a `mkdir` or a new entry in it).
/// A parent this process may not open (a root-owned `/var/spool` after the drop of
/// privileges) is left to the system, as there is nothing else to do.
fn sync_parent(path: &Path) -> io::Result<()> {
    let path = if path.as_os_str().is_empty() || path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(".").join(path)
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("/"),
    };
    match DirSync::sync_dir(parent) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        r => r,
    }
}

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
            Ok(()) => sync_parent(root)
                .map_err(|e| format!("cannot create spool {}: {e}", root.display()))?,
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
        spool.settle()?;
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
    /// Each directory it makes is made durable: a `mkdir` is an entry in the parent,
    /// which lasts through a power cut only once the parent is fsynced (without it a
    /// fresh spool, and every message acknowledged in it, could vanish).
    pub fn attach(root: &Path) -> io::Result<Spool> {
        for sub in ["", "tmp", "queue", "failed", "corrupt"] {
            let dir = root.join(sub);
            let err = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => sync_parent(&dir).map_err(err)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(Spool {
            root: root.to_path_buf(),
            queue_sync: DirSync::new(root.join("queue")),
            pid: std::process::id(),
            counter: AtomicU32::new(0),
            pool: std::sync::Mutex::new(std::collections::VecDeque::new()),
            pool_max: 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn queue_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("queue").join(id.as_str())
    }

    pub fn failed_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("failed").join(id.as_str())
    }

    pub fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        QueueId::mint(micros, n, self.pid)
    }

    /// Starts a message file in `tmp/` (an emptied one from the pool, or a new one)
    /// for message `id` (from `new_id`), and writes its envelope. The writer keeps
    /// the id: it is committed under that id and no other.
    pub fn create(&self, id: QueueId, env: &Envelope) -> io::Result<Writer> {
        let reused = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            match pool.front() {
                Some((_, ticket, _)) if self.queue_sync.covered(*ticket) => pool.pop_front(),
                _ => None,
            }
        }
        .and_then(|(id, _, emptied)| {
            let path = self.free_path(&id);
            let file = OpenOptions::new().write(true).open(&path).ok()?;
            if !emptied && file.set_len(0).is_err() {
                let _ = fs::remove_file(&path);
                return None;
            }
            Some((path, file))
        });
        let (tmp, file) = match reused {
            Some(reused) => reused,
            None => {
                let tmp = self.root.join("tmp").join(id.as_str());
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                (tmp, file)
            }
        };
        let mut head = String::with_capacity(256);
        let size_offset = env.emit(&mut head) as u64;
        let mut w = Writer {
            id,
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
    pub fn commit(&self, mut w: Writer) -> io::Result<QueueId> {
        if w.long_lines {
            // After the content, like the delivery records: an older reader skips it.
            w.file.write_all(Record::LongLines.emit().as_bytes())?;
        }
        w.file.flush()?;
        let file = w.file.get_ref();
        let size = format!("{:0w$}", w.written, w = SIZE_WIDTH);
        file.write_all_at(size.as_bytes(), w.size_offset)?;
        file.sync_data()?;
        let queued = self.queue_path(&w.id);
        fs::rename(&w.tmp, &queued)?;
        w.committed = true;
        if let Err(e) = self.queue_sync.sync() {
            let _ = fs::remove_file(&queued);
            return Err(e);
        }
        Ok(w.id.clone())
    }

    /// The ids in `failed/`, oldest first.
    pub fn list_failed(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = fs::read_dir(self.root.join("failed"))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                QueueId::parse(name.to_str()?)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a message from `queue/` or `failed/` (the caller makes sure no delivery
    /// of it is in flight). `Ok(false)`: there was no such message.
    pub fn delete(&self, id: &QueueId) -> io::Result<bool> {
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
    pub fn retry_failed(&self, id: &QueueId, now: u64) -> io::Result<bool> {
        let from = self.failed_path(id);
        match self.append(&from, &Record::Retry { time: now }) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            r => r?,
        }
        self.relocate(&from, &self.queue_path(id))?;
        Ok(true)
    }

    /// The ids in `queue/`, oldest first.
    pub fn list_queue(&self) -> io::Result<Vec<QueueId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.root.join("queue"))? {
            let name = entry?.file_name();
            match name.to_str().and_then(QueueId::parse) {
                Some(id) => ids.push(id),
                None => {
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
    pub fn read(&self, id: &QueueId) -> Result<Message, ReadError> {
        self.read_path(&self.queue_path(id), id)
    }

    /// Reads a message in `failed/`.
    pub fn read_failed(&self, id: &QueueId) -> Result<Message, ReadError> {
        self.read_path(&self.failed_path(id), id)
    }

    fn read_path(&self, path: &Path, id: &QueueId) -> Result<Message, ReadError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(e) => return Err(ReadError::Io(e)),
        };
        let len = file.metadata().map_err(ReadError::Io)?.len();
        // The envelope: a first read takes a usual one whole; a longer one, up to
        // MAX_HEADER, takes more.
        let mut head = vec![0u8; 4096.min(len as usize)];
        let head_of = |file: &File, buf: &mut [u8]| file.read_exact_at(buf, 0);
        head_of(&file, &mut head).map_err(ReadError::Io)?;
        let parsed = match Envelope::parse(&head) {
            Err(Corrupt::Truncated) if (head.len() as u64) < len => {
                head.resize(MAX_HEADER.min(len as usize), 0);
                head_of(&file, &mut head).map_err(ReadError::Io)?;
                Envelope::parse(&head)
            }
            other => other,
        };
        let format::Head {
            envelope,
            size,
            len: content_offset,
        } = parsed.map_err(ReadError::Corrupt)?;
        let content_offset = content_offset as u64;
        if content_offset + size > len {
            return Err(ReadError::Corrupt(Corrupt::ShortContent));
        }
        // The delivery records after the content.
        file.seek(SeekFrom::Start(content_offset + size))
            .map_err(ReadError::Io)?;
        let mut records = Vec::new();
        (&mut file)
            .take(MAX_RECORDS)
            .read_to_end(&mut records)
            .map_err(ReadError::Io)?;
        let n = envelope.recipients.len();
        let mut msg = Message {
            id: id.clone(),
            rcpt_state: vec![RcptState::Pending; n],
            envelope,
            size,
            content_offset,
            attempts: 0,
            last_attempt: None,
            next_try: None,
            last_reply: None,
            long_lines: false,
            replies: vec![None; n],
            notice_owed: false,
            warned: false,
            last_move: None,
            file,
        };
        for rec in Record::parse_all(&String::from_utf8_lossy(&records)) {
            msg.apply(rec);
        }
        Ok(msg)
    }

    /// Appends one delivery record and makes it durable.
    /// A record ends with TAB LF (values never hold a TAB), so one torn by a crash is
    /// known as such, even after a later record was appended behind it.
    fn append(&self, path: &Path, record: &Record) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).read(true).open(path)?;
        let len = f.metadata()?.len();
        let mut last = [0u8; 1];
        let mut line = String::with_capacity(128);
        if len > 0 && f.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            // After a torn record: it stays torn, this one starts a line of its own.
            line.push('\n');
        }
        line.push_str(&record.emit());
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }

    /// Appends a record to a message in `failed/`.
    pub fn record_failed(&self, id: &QueueId, record: &Record) -> io::Result<()> {
        self.append(&self.failed_path(id), record)
    }

    /// Whether a message with this id is in `queue/` or `failed/`.
    pub fn holds(&self, id: &QueueId) -> bool {
        self.queue_path(id).exists() || self.failed_path(id).exists()
    }

    /// Appends a record to a queued message.
    pub fn record(&self, id: &QueueId, record: &Record) -> io::Result<()> {
        self.append(&self.queue_path(id), record)
    }

    /// Delivery is complete for every recipient: the message leaves the queue.
    /// The directory is not fsynced for this (as Postfix does not): after a power
    /// loss the file may come back and be sent again, which at-least-once delivery
    /// allows; the sync would cost every delivery a disk flush. (The next commit's
    /// fsync of `queue/` makes the removal durable with it.)
    ///
    /// The file is moved to the pool (`tmp/free.ID`), whole; it is emptied once this
    /// removal is durable (see `pool`), by a later `remove` or by the `create` that
    /// reuses it: here, in the relay's thread, not on a client's way to its `250`.
    /// A power cut before that brings back the delivered message, never an empty or
    /// a mixed file. When the pool is full, or the file is large, it is unlinked.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let path = self.queue_path(id);
        let small = fs::metadata(&path).is_ok_and(|m| m.len() <= POOL_FILE_MAX);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        self.empty_covered(&mut pool);
        if pool.len() >= self.pool_max || !small {
            drop(pool);
            return fs::remove_file(path);
        }
        fs::rename(&path, self.free_path(id))?;
        pool.push_back((id.clone(), self.queue_sync.mark(), false));
        Ok(())
    }

    /// Empties the pool's files whose removal from `queue/` is durable by now.
    fn empty_covered(&self, pool: &mut std::collections::VecDeque<(QueueId, u64, bool)>) {
        pool.retain_mut(|(id, ticket, emptied)| {
            if *emptied || !self.queue_sync.covered(*ticket) {
                return true;
            }
            let path = self.free_path(id);
            *emptied = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .is_ok();
            if !*emptied {
                let _ = fs::remove_file(&path);
            }
            *emptied
        });
    }

    /// Moves a message to `failed/` with the reason recorded in it.
    pub fn move_to_failed(&self, id: &QueueId, now: u64, reason: &str) -> io::Result<()> {
        let reason = reason.to_string();
        self.append(&self.queue_path(id), &Record::Expired { time: now, reason })?;
        self.relocate(&self.queue_path(id), &self.failed_path(id))
    }

    /// Moves an unreadable file out of the queue so it is neither retried nor lost.
    pub fn move_aside(&self, id: &QueueId) -> io::Result<()> {
        self.move_aside_name(id)
    }

    fn move_aside_name(&self, name: &str) -> io::Result<()> {
        let to = self.root.join("corrupt").join(name);
        self.relocate(&self.root.join("queue").join(name), &to)
    }

    /// Moves a file between two spool directories so that a power cut at any moment
    /// leaves it in one of them or both, never in neither: the new name is linked
    /// and made durable before the old one is unlinked. (A rename changes two
    /// directories; with only one of them on the disk, as a disk without a journal
    /// may leave it, the file would be in neither.) A file found in both at the next
    /// start is settled by `settle`. Where hard links are not supported, a rename.
    fn relocate(&self, from: &Path, to: &Path) -> io::Result<()> {
        let sync = |dir: &Path| {
            if dir == self.root.join("queue") {
                self.queue_sync.sync()
            } else {
                DirSync::sync_dir(dir)
            }
        };
        let (from_dir, to_dir) = (
            from.parent().expect("in a directory"),
            to.parent().expect("in a directory"),
        );
        match fs::hard_link(from, to) {
            Ok(()) => {}
            // Linked before a crash that kept both names: go on with the unlink.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(from, to) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                fs::rename(from, to)?;
                sync(to_dir)?;
                return sync(from_dir);
            }
            Err(e) => return Err(e),
        }
        sync(to_dir)?;
        fs::remove_file(from)?;
        sync(from_dir)
    }

    /// At the daemon's start: a message in `queue/` and also in `failed/` or
    /// `corrupt/` (the same file, a move that a crash interrupted between its link
    /// and its unlink) is finished: a move to `corrupt/` or `failed/` stands, unless
    /// its last record is a `retry-failed`, which sent it back to the queue.
    fn settle(&self) -> io::Result<()> {
        for id in self.list_queue()? {
            let queued = self.queue_path(&id);
            for (area, path) in [
                ("corrupt", self.root.join("corrupt").join(id.as_str())),
                ("failed", self.failed_path(&id)),
            ] {
                if !same_file(&queued, &path) {
                    continue;
                }
                let back_in_queue = area == "failed"
                    && matches!(self.read(&id), Ok(m) if m.last_move == Some(Move::Retried));
                let (drop, dir) = if back_in_queue {
                    (path, self.root.join(area))
                } else {
                    (queued.clone(), self.root.join("queue"))
                };
                log::warn!(
                    "spool: {id} was in queue/ and {area}/ (a move cut short); kept in {}/",
                    if back_in_queue { "queue" } else { area }
                );
                fs::remove_file(&drop)?;
                DirSync::sync_dir(&dir)?;
                break;
            }
        }
        Ok(())
    }
}

/// Whether two paths name one file (the same inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The last move between `queue/` and `failed/` a message's records tell of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Failed,
    Retried,
}

impl Message {
    /// Applies one delivery record, in file order. The records of one attempt share
    /// its time: an attempt is counted once, at the first record with a new time
    /// (delivered, failed and deferred ones alike).
    fn apply(&mut self, rec: Record) {
        let attempt = |msg: &mut Message, time: u64| {
            if msg.last_attempt != Some(time) {
                msg.attempts += 1;
                msg.last_attempt = Some(time);
            }
        };
        match rec {
            Record::Delivered { rcpt, time, reply } => {
                attempt(self, time);
                if let Some(state) = self.rcpt_state.get_mut(rcpt) {
                    *state = RcptState::Delivered;
                    self.replies[rcpt] = Some(reply);
                }
            }
            Record::Failed { rcpt, time, reply } => {
                attempt(self, time);
                if let Some(state) = self.rcpt_state.get_mut(rcpt) {
                    *state = RcptState::Failed;
                    self.replies[rcpt] = Some(reply.clone());
                }
                self.last_reply = Some(reply);
            }
            Record::Deferred { time, next, reply } => {
                attempt(self, time);
                self.next_try = Some(next);
                self.last_reply = Some(reply);
            }
            Record::Retry { .. } => {
                for state in self
                    .rcpt_state
                    .iter_mut()
                    .filter(|s| **s == RcptState::Failed)
                {
                    *state = RcptState::Pending;
                }
                self.attempts = 0;
                self.last_attempt = None;
                self.next_try = None;
                // A new failure after this gets its own notice.
                self.notice_owed = false;
                self.last_move = Some(Move::Retried);
            }
            Record::LongLines => self.long_lines = true,
            Record::Expired { .. } => self.last_move = Some(Move::Failed),
            Record::NoticeOwed { .. } => self.notice_owed = true,
            Record::Notified { .. } => self.notice_owed = false,
            Record::Warned { .. } => self.warned = true,
        }
    }
}

/// A message being written to `tmp/`. Dropped without `commit`, it is removed.
pub struct Writer {
    id: QueueId,
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
    /// The id the message is queued under.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

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
pub(crate) mod tests {
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
        let mut w = spool.create(id.clone(), &env()).unwrap();
        w.write(content).unwrap();
        spool.commit(w).unwrap();
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
    fn a_removed_file_is_reused_once_its_removal_is_durable_and_emptied_then() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir("pool");
        let spool = Spool::open(&dir).unwrap();
        let big = vec![b'x'; 60_000];
        let first = queue(&spool, &big);
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let first_ino = ino(&spool.queue_path(&first));
        spool
            .record(
                &first,
                &Record::Deferred {
                    time: 10,
                    next: 70,
                    reply: "451 4.3.0 later".into(),
                },
            )
            .unwrap();
        spool.remove(&first).unwrap();
        assert!(spool.read(&first).is_err());
        // Kept whole until it is reused: a power cut that brings back queue/ID (its
        // removal is not on the disk yet) brings back the delivered message, not an
        // empty file.
        let free = dir.join(format!("tmp/free.{first}"));
        assert_eq!(names(&dir.join("tmp")), [format!("free.{first}")]);
        assert!(fs::metadata(&free).unwrap().len() > 60_000);

        // No sync of queue/ covers the removal yet: the next message gets a new file,
        // and the first stays whole (a commit does not empty it: that is not the
        // client's wait).
        let second = queue(&spool, b"Subject: 2\r\n\r\ntwo\r\n");
        assert_ne!(ino(&spool.queue_path(&second)), first_ino);
        assert_eq!(names(&dir.join("tmp")), [format!("free.{first}")]);
        assert!(fs::metadata(&free).unwrap().len() > 60_000);
        // That commit synced queue/: the next removal empties the first file.
        spool.remove(&second).unwrap();
        assert_eq!(fs::metadata(&free).unwrap().len(), 0);
        let second_free = dir.join(format!("tmp/free.{second}"));
        assert!(fs::metadata(&second_free).unwrap().len() > 0);

        // The third message gets the first one's inode, with nothing of the old
        // content; the second's removal is not covered yet, so it stays whole.
        let third = queue(&spool, b"Subject: y\r\n\r\nshort\r\n");
        assert_eq!(ino(&spool.queue_path(&third)), first_ino);
        assert_eq!(names(&dir.join("tmp")), [format!("free.{second}")]);
        let m = spool.read(&third).unwrap();
        assert_eq!((m.size, m.attempts), (21, 0));
        assert_eq!(m.rcpt_state, [RcptState::Pending, RcptState::Pending]);
        let mut content = Vec::new();
        m.open_content().unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, b"Subject: y\r\n\r\nshort\r\n");
        let mut whole = Vec::new();
        File::open(spool.queue_path(&third))
            .unwrap()
            .read_to_end(&mut whole)
            .unwrap();
        assert!(!whole.contains(&b'x') && !whole.windows(5).any(|w| w == b"later"));

        // A file over POOL_FILE_MAX is not kept (this one reused the second's file,
        // whose removal the third's commit covered).
        let large = queue(&spool, &vec![b'y'; POOL_FILE_MAX as usize + 1]);
        spool.remove(&large).unwrap();
        assert!(names(&dir.join("tmp")).is_empty());

        // An aborted message does not return its file to the pool.
        spool.remove(&third).unwrap();
        spool.queue_sync.sync().unwrap();
        for _ in 0..2 {
            let w = spool.create(spool.new_id(), &env()).unwrap();
            w.abort();
        }
        assert_eq!(names(&dir.join("tmp")), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_move_cut_between_link_and_unlink_is_settled_at_start() {
        let dir = temp_dir("settle");
        let spool = Spool::open(&dir).unwrap();
        let failed = queue(&spool, b"x\r\n");
        let retried = queue(&spool, b"y\r\n");
        let aside = queue(&spool, b"z\r\n");
        spool.move_to_failed(&failed, 5, "550 no").unwrap();
        spool.move_to_failed(&retried, 5, "550 no").unwrap();
        spool
            .append(&spool.failed_path(&retried), &Record::Retry { time: 6 })
            .unwrap();
        // As a power cut between the link and the unlink leaves them: in both.
        fs::hard_link(spool.failed_path(&failed), spool.queue_path(&failed)).unwrap();
        fs::hard_link(spool.failed_path(&retried), spool.queue_path(&retried)).unwrap();
        fs::hard_link(
            spool.queue_path(&aside),
            dir.join("corrupt").join(aside.as_str()),
        )
        .unwrap();
        drop(spool);
        let spool = Spool::open(&dir).unwrap();
        // A failed one stays failed; one whose last record is a retry is queued; one
        // moved aside stays aside.
        assert_eq!(spool.list_failed().unwrap(), std::slice::from_ref(&failed));
        assert_eq!(spool.list_queue().unwrap(), std::slice::from_ref(&retried));
        assert_eq!(names(&dir.join("corrupt")), [aside.to_string()]);
        // A move finishes when its target is there already (linked before a cut).
        fs::hard_link(spool.queue_path(&retried), spool.failed_path(&retried)).unwrap();
        spool.move_to_failed(&retried, 7, "550 again").unwrap();
        assert!(spool.list_queue().unwrap().is_empty());
        assert_eq!(spool.list_failed().unwrap(), [failed, retried]);
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
        assert!(QueueId::parse(&id).is_some(), "{id}");
        assert_ne!(id, spool.new_id());
        let mut w = spool.create(id.clone(), &env()).unwrap();
        w.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        spool.commit(w).unwrap();
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        assert_eq!(spool.list_queue().unwrap(), vec![id.clone()]);

        let m = spool.read(&id).unwrap();
        assert_eq!(m.envelope, env());
        assert_eq!(m.size, 20);
        let mut content = Vec::new();
        m.open_content().unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(m.rcpt_state, [RcptState::Pending, RcptState::Pending]);

        spool
            .record(
                &id,
                &Record::Delivered {
                    rcpt: 0,
                    time: 10,
                    reply: "250 2.0.0 ok".into(),
                },
            )
            .unwrap();
        spool
            .record(
                &id,
                &Record::Deferred {
                    time: 10,
                    next: 70,
                    reply: "451 4.3.0 later\r\nX injected".into(),
                },
            )
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

        spool
            .record(
                &id,
                &Record::Failed {
                    rcpt: 1,
                    time: 19,
                    reply: "550 5.1.1 no".into(),
                },
            )
            .unwrap();
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
        let mut w = spool.create(id.clone(), &env()).unwrap();
        w.write(b"0123456789").unwrap();
        spool.commit(w).unwrap();
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
        let w = spool.create(spool.new_id(), &env()).unwrap();
        drop(w);
        let _ = Spool::open(&dir).unwrap();
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
