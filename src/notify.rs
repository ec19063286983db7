//! systemd's readiness protocol (sd_notify(3)): a datagram to `$NOTIFY_SOCKET`.
//! Without the variable (any other init), nothing happens.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) if the service manager asked for it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::warn!("cannot notify the service manager: {e}");
    }
}
