//! Dropping root after the listeners are bound (`user NAME`), for a minimal init
//! that starts daemons as root. The user is looked up in /etc/passwd (what small
//! devices have); the drop is checked, and running on as root is refused.

// Unsafe code (with `process`): the libc calls that std does not wrap (dropping root,
// and the free space of the spool's filesystem).
#![allow(unsafe_code)]

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// `name` in `passwd` (the contents of /etc/passwd).
pub fn lookup(passwd: &str, name: &str) -> Option<Ids> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some(Ids {
            uid: f.next()?.parse().ok()?,
            gid: f.next()?.parse().ok()?,
        })
    })
}

/// Gives the spool to the user, so that it can go on writing there.
pub fn chown_spool(root: &Path, ids: Ids) -> Result<(), String> {
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    own(root)?;
    // Everything at the top (the areas, relay.lock that a queue command run as root
    // may have made, the control socket), and what the areas hold.
    for entry in std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))? {
        own(&entry.map_err(|e| e.to_string())?.path())?;
    }
    for sub in ["tmp", "queue", "failed", "corrupt"] {
        let dir = root.join(sub);
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            own(&entry.map_err(|e| e.to_string())?.path())?;
        }
    }
    Ok(())
}

/// setgroups, setgid, setuid, in that order, then checks that root cannot be regained.
pub fn drop_to(ids: Ids) -> Result<(), String> {
    let gid = ids.gid as libc::gid_t;
    let uid = ids.uid as libc::uid_t;
    // SAFETY: plain system calls with valid arguments; `&gid` outlives the call.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!(
                "setgid({gid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!(
                "setuid({uid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid {
            return Err("the user and group did not change".into());
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err("root could be regained after the drop".into());
        }
    }
    Ok(())
}

/// The real user id.
pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail and has no arguments.
    unsafe { libc::getuid() }
}

/// The name of the real user, from /etc/passwd.
pub fn current_user() -> Option<String> {
    let uid = uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// Octets an unprivileged process may still write on the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-value.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nnobody:x:65534:65534:nobody:/:/bin/false\nmail:x:8:8::/var/mail:\n";
        assert_eq!(
            lookup(passwd, "nobody"),
            Some(Ids {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(lookup(passwd, "mail"), Some(Ids { uid: 8, gid: 8 }));
        assert_eq!(lookup(passwd, "nobod"), None);
        assert_eq!(lookup("broken:x:notanumber:1::/:\n", "broken"), None);
    }
}
