//! Group commit for directory fsyncs.
//!
//! A rename is durable only once its directory is fsynced. When several sessions
//! commit at once, one fsync started after all their renames covers them all: each
//! committer takes a ticket after its rename and waits until a sync that began after
//! its ticket has finished, starting one itself if none is running. Counters are
//! plain integers under a mutex, so no 64-bit atomics are needed (mipsel has none).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

pub struct DirSync {
    dir: PathBuf,
    state: Mutex<State>,
    done: Condvar,
}

struct State {
    /// Tickets handed out (renames waiting to be covered).
    issued: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    running: bool,
    /// The directory, opened once and kept (taken out by the running sync).
    file: Option<File>,
}

impl DirSync {
    pub fn new(dir: PathBuf) -> Self {
        DirSync {
            dir,
            state: Mutex::new(State {
                issued: 0,
                synced: 0,
                running: false,
                file: None,
            }),
            done: Condvar::new(),
        }
    }

    pub fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Takes a ticket for a change just made to the directory, without waiting: the
    /// next sync that starts from now covers it (`covered`).
    pub fn mark(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.issued += 1;
        st.issued
    }

    /// Whether a sync that covers the change of `ticket` has finished.
    pub fn covered(&self, ticket: u64) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).synced >= ticket
    }

    /// Returns once every change made to the directory before the call is durable.
    pub fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.synced >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let covers = st.issued;
                let file = st.file.take();
                drop(st);
                let result = match file {
                    Some(f) => Ok(f),
                    None => File::open(&self.dir),
                }
                .and_then(|f| f.sync_all().map(|()| f));
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                let result = result.map(|f| {
                    st.file = Some(f);
                    st.synced = st.synced.max(covers);
                });
                self.done.notify_all();
                // On failure, the others try again themselves rather than trust it.
                result?;
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}
