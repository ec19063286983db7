//! `sendmail -bs`: an SMTP session on stdin and stdout (as nullmailer offers), for
//! programs that speak SMTP to a local command instead of a socket.
//!
//! The caller is local and already trusted: the session offers neither STARTTLS
//! (there is no connection to secure) nor AUTH, and always queues.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use crate::config::Config;
use crate::protocol::driver::{self, Input, Shell};
use crate::protocol::policy::Senders;
use crate::protocol::server::{Peer, Refusal, ServerSession, Stamp, StoreError};
use crate::server::worker::Spooling;
use crate::spool::Spool;

pub fn serve(config: &Config) -> ExitCode {
    let spool = match Spool::attach(&config.spool) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "sendmail: cannot open spool {}: {e}",
                config.spool.display()
            );
            return ExitCode::from(super::submit::EX_CANTCREAT);
        }
    };
    let policy = match config.policy() {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(78);
        }
    };
    let mut settings = crate::server::worker::settings(config, policy);
    // sendmail always queues: there is no client connection to hold in passthrough.
    settings.passthrough = false;
    settings.tls_available = false;
    settings.auth_available = false;
    let mut session = Box::new(ServerSession::new(settings));
    // A local caller: allowed to relay, like a script calling sendmail.
    session.start(Peer {
        ip: [127, 0, 0, 1].into(),
        relay_allowed: true,
        tls: false,
        auth_plaintext: false,
    });
    let mut stdio = Stdio {
        input: std::io::stdin().lock(),
        output: std::io::stdout().lock(),
        spool: &spool,
        write_failed: false,
    };
    let mut buf = vec![0u8; 16 * 1024];
    driver::run(&mut session, &mut stdio, &mut buf);
    if stdio.write_failed {
        return ExitCode::from(super::submit::EX_IOERR);
    }
    ExitCode::SUCCESS
}

/// stdin and stdout as the session's connection, and the spool.
struct Stdio<'a, R, W> {
    input: R,
    output: W,
    spool: &'a Spool,
    /// stdout failed: the caller cannot hear the replies.
    write_failed: bool,
}

impl<R: Read, W: Write> Shell for Stdio<'_, R, W> {
    type Message = Spooling;

    fn read(&mut self, buf: &mut [u8], _: &ServerSession) -> Input {
        loop {
            return match self.input.read(buf) {
                Ok(0) => Input::Closed,
                Ok(n) => Input::Bytes(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => Input::Closed,
            };
        }
    }

    fn write(&mut self, replies: &[u8]) -> Result<(), driver::Gone> {
        let sent = self
            .output
            .write_all(replies)
            .and_then(|()| self.output.flush());
        self.write_failed |= sent.is_err();
        sent.map_err(|_| driver::Gone)
    }

    fn open(&mut self, session: &ServerSession) -> Result<Spooling, StoreError> {
        let client = format!("local uid={} (sendmail -bs)", crate::privileges::uid());
        Spooling::open(self.spool, session, client)
    }

    fn stamp<'m>(&self, m: &'m Spooling) -> Stamp<'m> {
        m.stamp()
    }

    fn write_body(&mut self, m: &mut Spooling, body: &[u8]) -> Result<(), StoreError> {
        m.write(body)
    }

    fn commit(&mut self, m: &mut Spooling, session: &ServerSession) -> Result<(), StoreError> {
        m.commit(self.spool, session)?;
        crate::relay::notify_queued(self.spool, m.id());
        Ok(())
    }

    fn discard(&mut self, m: Spooling) {
        m.abort();
    }

    fn check_space(&mut self, size: u64) -> bool {
        self.spool.has_room(size)
    }

    /// `rate_limit` is for clients on the network; a local caller is not counted
    /// (as with the command-line `sendmail`).
    fn check_rate(&mut self, _: IpAddr) -> bool {
        true
    }

    /// Never asked: AUTH is not offered here.
    fn authenticate(&mut self, _: &ServerSession) -> Option<Option<Senders>> {
        None
    }

    /// There is no connection to secure: STARTTLS gets 454 (and is not offered).
    fn tls_available(&self) -> bool {
        false
    }

    fn handshake(&mut self) -> bool {
        false
    }

    fn refused(&mut self, why: &Refusal, session: &ServerSession, id: Option<&str>) {
        crate::server::worker::log_refusal(why, session, 0, id);
    }
}
