//! Running a helper program (the OAuth2 token command) with fork and execv: no shell,
//! stdin from /dev/null, its output read through pipes within a deadline, and the
//! program killed after it. std's `Command` does the same, but costs 43 KB of the
//! static aarch64 binary (and a reader thread for the timeout); this is a fraction.

// Unsafe code, beside `privileges`: fork, execv and the pipes. Between fork and execv
// the child calls only async-signal-safe functions on memory prepared before.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `exit status: N`, `killed by signal N`: for a message; `None` is success.
    pub failure: Option<String>,
}

/// Runs `argv[0]` (an absolute path) with `argv[1..]`, keeping at most `limit` octets
/// of its stdout and 4 KiB of its stderr. Past `timeout` it is killed and that is an
/// error.
pub fn run(argv: &[String], limit: usize, timeout: Duration) -> Result<Output, String> {
    let args = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "an argument holds a NUL".to_string())?;
    let Some(program) = args.first() else {
        return Err("no program".into());
    };
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(core::ptr::null());
    let devnull = c"/dev/null";
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // execv's failure comes back through this one; success closes it (CLOEXEC).
    let (exec_r, exec_w) = pipe()?;
    // SAFETY: the child only calls async-signal-safe functions, on memory made above.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
            if null < 0
                || libc::dup2(null, 0) < 0
                || libc::dup2(out_w.0, 1) < 0
                || libc::dup2(err_w.0, 2) < 0
            {
                child_fails(exec_w.0);
            }
            libc::execv(program.as_ptr(), ptrs.as_ptr());
            child_fails(exec_w.0);
        }
    }
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    drop((out_w, err_w, exec_w));
    let mut errno = [0u8; 4];
    let mut exec = exec_r.file();
    if exec.read(&mut errno).unwrap_or(0) == 4 {
        reap(pid, true);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)).to_string());
    }
    let deadline = Instant::now() + timeout;
    let mut fds = [(out_r, Vec::new(), limit), (err_r, Vec::new(), 4096)];
    let mut open = 2;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            reap(pid, true);
            return Err(format!("no token within {}s; killed", timeout.as_secs()));
        }
        let mut polls: Vec<libc::pollfd> = fds
            .iter()
            .filter(|(fd, ..)| fd.0 >= 0)
            .map(|(fd, ..)| libc::pollfd {
                fd: fd.0,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: `polls` is a valid array of its length.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            reap(pid, true);
            return Err(format!("poll: {}", io::Error::last_os_error()));
        }
        for p in polls.iter().filter(|p| p.revents != 0) {
            let Some((fd, buf, cap)) = fds.iter_mut().find(|(fd, ..)| fd.0 == p.fd) else {
                continue;
            };
            let mut chunk = [0u8; 4096];
            // SAFETY: a valid buffer of its length.
            let got = unsafe { libc::read(fd.0, chunk.as_mut_ptr().cast(), chunk.len()) };
            if got <= 0 {
                if got == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    *fd = Fd(-1);
                    open -= 1;
                }
                continue;
            }
            let keep = (*cap - buf.len()).min(got as usize);
            buf.extend_from_slice(&chunk[..keep]);
        }
    }
    // Both pipes are closed: the program has ended, or closes them and lives on.
    let status = loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break status;
        }
        if r < 0 || Instant::now() >= deadline {
            reap(pid, true);
            return Err(format!(
                "did not exit within {}s; killed",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let failure = if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => None,
            code => Some(format!("exit status: {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        Some(format!("killed by signal {}", libc::WTERMSIG(status)))
    } else {
        Some("ended abnormally".into())
    };
    let [(_, stdout, _), (_, stderr, _)] = fds;
    Ok(Output {
        stdout,
        stderr,
        failure,
    })
}

/// Reports errno to the parent and ends the child without running any Rust code.
unsafe fn child_fails(fd: RawFd) -> ! {
    unsafe {
        let e = *libc::__errno_location();
        libc::write(fd, (&e as *const libc::c_int).cast(), 4);
        libc::_exit(127)
    }
}

fn reap(pid: libc::pid_t, kill: bool) {
    // SAFETY: plain syscalls on our own child.
    unsafe {
        if kill {
            libc::kill(pid, libc::SIGKILL);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// A descriptor closed on drop (-1: none).
struct Fd(RawFd);

impl Fd {
    fn file(self) -> File {
        let fd = self.0;
        core::mem::forget(self);
        // SAFETY: the descriptor is ours alone, and the File now owns it.
        unsafe { File::from_raw_fd(fd) }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: ours, closed once.
            unsafe { libc::close(self.0) };
        }
    }
}

fn pipe() -> Result<(Fd, Fd), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    Ok((Fd(fds[0]), Fd(fds[1])))
}
