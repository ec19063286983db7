//! `sendmail -bs`: an SMTP session on stdin and stdout (as nullmailer offers), for
//! programs that speak SMTP to a local command instead of a socket.

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::config::Config;
use crate::protocol::server::{Peer, ServerSession, Step, StoreError, received_header};
use crate::spool::{self, Spool};

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
    // sendmail always queues: there is no client connection to hold in passthrough.
    let mut settings = crate::server::worker::settings(config, policy);
    settings.passthrough = false;
    let mut session = Box::new(ServerSession::new(settings));
    // A local caller: allowed to relay, like a script calling sendmail.
    session.start(Peer {
        ip: [127, 0, 0, 1].into(),
        relay_allowed: true,
        tls: false,
        auth_plaintext: false,
    });
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = vec![0u8; 16 * 1024];
    let mut message: Option<(spool::QueueId, spool::Writer)> = None;
    let mut failed = false;
    loop {
        if output
            .write_all(session.output())
            .and_then(|()| output.flush())
            .is_err()
        {
            return ExitCode::from(super::submit::EX_IOERR);
        }
        session.clear_output();
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return ExitCode::SUCCESS,
            Ok(n) => n,
        };
        let mut pos = 0;
        loop {
            let (used, step) = session.feed(&buf[pos..n]);
            pos += used;
            match step {
                Step::NeedInput => break,
                Step::Flush => {
                    let _ = output.write_all(session.output());
                    session.clear_output();
                }
                Step::OpenMessage => {
                    let id = spool.new_id();
                    let client = format!("local uid={} (sendmail -bs)", crate::privileges::uid());
                    let record = crate::server::worker::envelope_record(
                        &session,
                        crate::time::now_unix(),
                        client,
                    );
                    let date = crate::time::rfc5322(record.created);
                    let opened = spool.create(&id, &record).and_then(|mut w| {
                        let mut trace = String::new();
                        let _ = received_header(&mut trace, &session, &id, &date);
                        w.write(trace.as_bytes()).map(|()| w)
                    });
                    failed = false;
                    let result = match opened {
                        Ok(w) => {
                            message = Some((id, w));
                            Ok(())
                        }
                        Err(e) if spool::is_no_space(&e) => Err(StoreError::NoSpace),
                        Err(_) => Err(StoreError::Local),
                    };
                    session.spool_opened(result);
                    if let Some((id, _)) = &message {
                        session.add_missing(id, &date);
                    }
                }
                Step::CheckSpace(size) => session.space_checked(spool.has_room(size)),
                Step::WriteBody | Step::StoreMessage => {
                    if let Some((_, w)) = message.as_mut() {
                        failed |= w.write(session.body()).is_err();
                        if step == Step::StoreMessage && session.saw_long_line() {
                            w.set_long_lines();
                        }
                    }
                    session.clear_body();
                    if step == Step::StoreMessage {
                        let result = match message.take() {
                            Some((id, w)) if !failed => match spool.commit(&id, w) {
                                Ok(()) => {
                                    crate::relay::notify_queued(&spool, &id);
                                    Ok(id)
                                }
                                Err(_) => Err(StoreError::Local),
                            },
                            _ => Err(StoreError::Local),
                        };
                        match &result {
                            Ok(id) => session.stored(Ok(id)),
                            Err(e) => session.stored(Err(*e)),
                        }
                    }
                }
                Step::DiscardMessage => message = None,
                Step::StartTls | Step::Authenticate => {}
                // Never asked (passthrough is off here); answered so the session moves on.
                Step::Upstream(_) => session.upstream_unavailable(),
                Step::Close => {
                    let _ = output.write_all(session.output());
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}
