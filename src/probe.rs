//! `smtp-relayd test ADDR`: one short message through the smarthost at once, past
//! the queue, printing each step (the connection, TLS and the certificate, AUTH,
//! every reply) and, when a step fails, what to fix.

use crate::config::{Config, SmarthostAuth, SmarthostTls};
use crate::protocol::client::{Reply, Single, Stage};
use crate::relay::{Host, Upstream};

/// What a person should look at, from where it failed and what was said.
pub fn advice(stage: Stage, reply: &Reply, host: &Host) -> String {
    let text = reply.text.to_ascii_lowercase();
    let c = &host.conf;
    let port = c.address.port;
    let tls_mode = match port {
        465 => "port 465 speaks TLS from the first byte: smarthost_tls implicit",
        587 | 25 => "port 587 (and 25) start plain and upgrade: smarthost_tls starttls",
        _ => "465 wants smarthost_tls implicit, 587 smarthost_tls starttls",
    };
    if text.contains("cannot resolve") {
        return format!(
            "the name {} does not resolve: check its spelling and this box's DNS (/etc/resolv.conf)",
            c.address.host
        );
    }
    if text.contains("cannot connect") {
        if text.contains("refused") {
            return format!(
                "nothing accepts connections on {}: check the port (587 for STARTTLS, 465 for implicit TLS)",
                c.address
            );
        }
        return format!(
            "no answer from {}: a firewall or the provider of this line may block port {port} \
             (many block 25; try 587 or 465), or the host is down",
            c.address
        );
    }
    if text.contains("not valid yet") || text.contains("expired") || text.contains("clock") {
        return "the certificate's dates do not match this box's clock: check the system time \
                (date; NTP), routers often boot in 1970"
            .to_string();
    }
    if text.contains("notvalidforname") || text.contains("not valid for name") {
        return format!(
            "the certificate is not for {}: use the name the provider gives for its SMTP \
             service as the smarthost",
            c.address.host
        );
    }
    if text.contains("unknownissuer")
        || text.contains("unknown issuer")
        || text.contains("causedasendentity")
        || text.contains("invalid peer certificate")
    {
        return "the certificate is not signed by a CA this box trusts: install the CA bundle \
                (ca-certificates), or set smarthost_ca_file; for a self-signed one, \
                smarthost_fingerprint"
            .to_string();
    }
    if text.contains("fingerprint") {
        return "the certificate is not the one smarthost_fingerprint names: the provider may \
                have renewed it; check it with openssl s_client and update the pin"
            .to_string();
    }
    if text.contains("does not offer starttls") {
        return format!("the smarthost offers no STARTTLS here: {tls_mode}");
    }
    if text.contains("handshake") || text.contains("tls") && stage == Stage::Connect {
        return format!("the TLS handshake failed: {tls_mode}");
    }
    match stage {
        Stage::Token => "no OAuth2 token: check the smarthost_oauth_* settings, and run \
                         'smtp-relayd oauth token' to test them alone"
            .to_string(),
        Stage::Auth if reply.is_permanent() && c.auth == SmarthostAuth::Password => {
            "the smarthost refused the user or the password: check smarthost_user and \
             smarthost_password_file (Gmail and Outlook.com want an app password; Microsoft \
             365 turns password SMTP AUTH off by default at the end of December 2026: use \
             smarthost_auth xoauth2)"
                .to_string()
        }
        Stage::Auth if reply.is_permanent() => {
            "the smarthost refused the OAuth2 token: check smarthost_user (the mailbox the \
             token is for) and the app's permission to send (Microsoft: SMTP.SendAsApp or \
             SMTP.Send, SMTP AUTH enabled for the mailbox; Google: https://mail.google.com/)"
                .to_string()
        }
        Stage::Auth => {
            if text.contains("does not offer") || text.contains("not offer auth") {
                "the smarthost offers no AUTH mechanism the relay can use here (over TLS only, \
                 unless smarthost_auth_plaintext)"
                    .to_string()
            } else {
                "AUTH did not work for now: try again; if it stays, check the credentials"
                    .to_string()
            }
        }
        Stage::Greeting | Stage::Hello if reply.code / 100 == 5 || reply.code == 421 => {
            "the smarthost refuses this client: this address may be on a blocklist, or the \
             service is down; the reply says which"
                .to_string()
        }
        _ => {
            if c.tls == SmarthostTls::None {
                "see the reply above (the connection is plain TCP: smarthost_tls none)".to_string()
            } else {
                "see the reply above".to_string()
            }
        }
    }
}

/// The sender of the test message: `--from`, else `rewrite_sender`, else the
/// smarthost user when it is an address, else `sendmail_from`, else
/// `postmaster@hostname`.
pub fn sender(config: &Config, host: &Host, from: Option<&str>) -> String {
    from.map(str::to_string)
        .or_else(|| config.rewrite_sender.clone())
        .or_else(|| host.conf.user.clone().filter(|u| u.contains('@')))
        .or_else(|| config.sendmail_from.clone())
        .unwrap_or_else(|| format!("postmaster@{}", config.hostname))
}

/// The message: short, with the headers a provider wants.
pub fn message(config: &Config, from: &str, to: &str, host: &Host, now: u64) -> Vec<u8> {
    let date = crate::time::rfc5322(now);
    format!(
        "From: smtp-relayd on {h} <{from}>\r\nTo: <{to}>\r\nSubject: smtp-relayd test from {h}\r\n\
         Date: {date}\r\nMessage-ID: <test.{now}.{pid}@{h}>\r\nAuto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is a test message from smtp-relayd on {h},\r\n\
         sent through the smarthost {name} ({addr}) at {date}.\r\n\
         If you can read it, the relay can deliver mail.\r\n",
        h = config.hostname,
        pid = std::process::id(),
        name = host.conf.name,
        addr = host.conf.address,
    )
    .into_bytes()
}

/// Runs the test; prints as it goes. Returns whether the smarthost took the message.
pub fn run(config: &Config, host: &Host, to: &str, from: Option<&str>) -> bool {
    let from = sender(config, host, from);
    let c = &host.conf;
    println!(
        "smarthost {} ({}), TLS {}, AUTH {}",
        c.name,
        c.address,
        match c.tls {
            SmarthostTls::Starttls => "STARTTLS (required)",
            SmarthostTls::Implicit => "implicit",
            SmarthostTls::None => "none (plain TCP)",
        },
        match (&c.user, c.auth) {
            (None, _) => "none".to_string(),
            (Some(u), SmarthostAuth::Password) => format!("as {u} with a password"),
            (Some(u), a) => format!("as {u} with {a:?} tokens"),
        }
    );
    #[cfg(feature = "tls")]
    if let Some(t) = &host.tls {
        println!("trusting {}", t.trust);
    }
    crate::relay::upstream_trace(true);
    let result = transaction(config, host, &from, to);
    crate::relay::upstream_trace(false);
    match result {
        Ok(reply) => {
            println!(
                "OK: {} accepted the test message for <{to}>: {reply}",
                c.name
            );
            true
        }
        Err((what, reply, stage)) => {
            println!("FAILED at {what}: {reply}");
            println!("what to check: {}", advice(stage, &reply, host));
            false
        }
    }
}

type Failure = (&'static str, Reply, Stage);

fn transaction(config: &Config, host: &Host, from: &str, to: &str) -> Result<Reply, Failure> {
    let mut up = Upstream::connect(&config.hostname, host).map_err(|e| {
        let what = match e.stage {
            Stage::Token => "the OAuth2 token",
            Stage::Connect => "the connection",
            Stage::Greeting => "the greeting",
            Stage::Hello => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Transaction => "the session",
        };
        (what, e.reply, e.stage)
    })?;
    println!("ready for mail");
    let text = message(config, from, to, host, crate::time::now_unix());
    let step =
        |up: &mut Upstream, what: &'static str, cmd: Single<'_>, want: u16| match up.single(cmd) {
            Ok(r) if r.code / 100 == want / 100 => Ok(r),
            Ok(r) | Err(r) => Err((what, r, Stage::Transaction)),
        };
    let mail = Single::Mail {
        sender: from,
        size: Some(text.len() as u64),
        eight_bit: false,
        smtputf8: false,
    };
    step(&mut up, "MAIL (the sender)", mail, 250).map_err(|(w, r, _)| {
        let r2 = Reply::new(
            r.code,
            &format!(
                "{} (sender <{from}>; set rewrite_sender or --from to the account's own address)",
                r.text
            ),
        );
        (w, r2, Stage::Transaction)
    })?;
    step(&mut up, "RCPT (the recipient)", Single::Rcpt(to), 250)?;
    step(&mut up, "DATA", Single::Data, 354)?;
    // The text has no line that starts with a dot: no stuffing is needed.
    println!("  > (the test message, {} octets)\n  > .", text.len());
    let r = up
        .end_data(&[&text[..], b".\r\n"].concat())
        .map_err(|r| ("the end of data", r, Stage::Transaction))?;
    if r.code / 100 != 2 {
        return Err(("the end of data", r, Stage::Transaction));
    }
    up.quit();
    Ok(r)
}
