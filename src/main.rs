//! smtp-relayd: the daemon's entry point. Parses the command line, loads the
//! configuration, binds the listeners, starts the threads, and runs the shutdown
//! sequence on SIGTERM/SIGINT.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use smtp_relayd::config::{Config, SmarthostTls};
use smtp_relayd::relay::{Control, Relay, TlsClient};
use smtp_relayd::server::Shared;
use smtp_relayd::server::acceptor::{self, Acceptor};
use smtp_relayd::server::worker::{TlsServer, Worker};
use smtp_relayd::spool::Spool;

/// sysexits.h
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

const DEFAULT_CONFIG: &str = "/etc/smtp-relayd.conf";

const HELP: &str = "\
smtp-relayd: a small, durable SMTP relay for embedded Linux

Usage: smtp-relayd [-c FILE] [--check]

Options:
  -c, --config FILE   configuration file (default /etc/smtp-relayd.conf)
      --check         validate the configuration, print the effective settings, exit
  -V, --version       print the version and exit
  -h, --help          print this help and exit

It runs in the foreground and logs to stderr (RUST_LOG=debug for more).
SIGTERM or SIGINT stops it cleanly; queued mail stays in the spool.
";

struct Args {
    config: PathBuf,
    check: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: PathBuf::from(DEFAULT_CONFIG),
        check: false,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let Some(a) = arg.to_str() else {
            return Err("arguments must be UTF-8".into());
        };
        match a {
            "-c" | "--config" => {
                args.config = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{a} needs a FILE"))?;
            }
            _ if a.starts_with("--config=") => args.config = PathBuf::from(&a["--config=".len()..]),
            _ if a.starts_with("-c") && a.len() > 2 => args.config = PathBuf::from(&a[2..]),
            "--check" => args.check = true,
            "-V" | "--version" => {
                println!("smtp-relayd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            _ => return Err(format!("unknown argument '{a}'")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-relayd: {e}\n\n{HELP}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let tls = match smarthost_tls(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let tls_server = match server_tls(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    #[cfg(feature = "tls")]
    let users = match config
        .auth_users
        .as_deref()
        .map(smtp_relayd::auth::Users::load)
        .transpose()
    {
        Ok(u) => u.map(Arc::new),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check {
        print!("# {}: OK\n{}", args.config.display(), config.effective());
        #[cfg(feature = "tls")]
        if let Some(u) = &users {
            println!("# auth_users: {} user(s)", u.len());
        }
        if let Some(t) = describe_tls(&tls) {
            println!("# smarthost TLS: trusting {t}");
        }
        return ExitCode::SUCCESS;
    }
    smtp_relayd::logger::init(config.log, config.syslog_socket.clone());
    #[cfg(not(feature = "tls"))]
    let users = None;
    match serve(config, tls, tls_server, users) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(target: "fatal", "{e}");
            ExitCode::from(1)
        }
    }
}

/// `user NAME`: give the spool to NAME, then become NAME (listeners are bound).
fn become_user(user: &str, config: &Config) -> Result<(), String> {
    use smtp_relayd::privileges;
    if !privileges::is_root() {
        log::info!("user {user}: not started as root; running as the current user");
        return Ok(());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let ids = privileges::lookup(&passwd, user)
        .ok_or_else(|| format!("user '{user}' is not in /etc/passwd"))?;
    privileges::chown_spool(&config.spool, ids)?;
    privileges::drop_to(ids)
        .map_err(|e| format!("cannot drop privileges to {user}: {e}; refusing to run as root"))?;
    log::info!("running as {user} (uid {}, gid {})", ids.uid, ids.gid);
    Ok(())
}

/// The relay's TLS client, built (and so checked: CA file, names) before anything starts.
fn smarthost_tls(config: &Config) -> Result<Option<TlsClient>, String> {
    #[cfg(feature = "tls")]
    if config.smarthost_tls != SmarthostTls::None {
        return TlsClient::new(config)
            .map(Some)
            .map_err(|e| format!("{}: {e}", config.path.display()));
    }
    let _ = (config, SmarthostTls::None);
    Ok(None)
}

/// The server certificate for STARTTLS and `tls` listeners, loaded (and so checked) first.
fn server_tls(config: &Config) -> Result<Option<TlsServer>, String> {
    #[cfg(feature = "tls")]
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return TlsServer::new(cert, key)
            .map(Some)
            .map_err(|e| format!("{}: {e}", config.path.display()));
    }
    let _ = config;
    Ok(None)
}

fn describe_tls(tls: &Option<TlsClient>) -> Option<String> {
    #[cfg(feature = "tls")]
    return tls.as_ref().map(|t| t.trust.clone());
    #[cfg(not(feature = "tls"))]
    {
        let _ = tls;
        None
    }
}

#[cfg(feature = "tls")]
type Users = Option<Arc<smtp_relayd::auth::Users>>;
#[cfg(not(feature = "tls"))]
type Users = Option<()>;

fn serve(
    config: Config,
    tls: Option<TlsClient>,
    tls_server: Option<TlsServer>,
    users: Users,
) -> Result<(), String> {
    let trust = describe_tls(&tls);
    let config = Arc::new(config);
    let spool = Arc::new(
        Spool::open(&config.spool)
            .map_err(|e| format!("cannot open spool {}: {e}", config.spool.display()))?,
    );
    let mut listeners = Vec::new();
    for l in &config.listen {
        let listener =
            TcpListener::bind(l.addr).map_err(|e| format!("cannot listen on {}: {e}", l.addr))?;
        listeners.push((listener, l.tls));
    }
    if let Some(user) = &config.user {
        become_user(user, &config)?;
    }
    // Registered before any thread starts, so that no thread dies of these signals.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot set up signals: {e}"))?;

    let shared = Arc::new(Shared::new(config.workers));
    let stop_relay = Arc::new(AtomicBool::new(false));
    let rescan = Arc::new(AtomicBool::new(false));
    let (relay_tx, relay_rx) = crossbeam_channel::bounded::<Control>(1024);
    // The hand-off queue: connections beyond the busy workers wait here, up to
    // max_connections in all; past that the acceptor answers 421.
    let (pool_tx, pool_rx) = crossbeam_channel::bounded(config.max_connections - config.workers);

    let relay = {
        let (config, spool, stop, rescan) = (
            Arc::clone(&config),
            Arc::clone(&spool),
            Arc::clone(&stop_relay),
            Arc::clone(&rescan),
        );
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                // A bug in delivery must not stop delivery for good (unwinding builds;
                // with panic=abort the supervisor restarts the whole daemon). The
                // schedule is rebuilt from the spool, so nothing is lost.
                loop {
                    let r = Relay::new(
                        Arc::clone(&config),
                        Arc::clone(&spool),
                        relay_rx.clone(),
                        Arc::clone(&stop),
                        Arc::clone(&rescan),
                        tls.clone(),
                    );
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.run())) {
                        Ok(()) => break,
                        Err(_) => {
                            log::error!("relay thread panicked; restarting it in 5s");
                            std::thread::sleep(Duration::from_secs(5));
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?
    };
    let mut workers = Vec::new();
    for index in 0..config.workers {
        let w = Worker {
            index,
            config: Arc::clone(&config),
            spool: Arc::clone(&spool),
            relay: relay_tx.clone(),
            rescan: Arc::clone(&rescan),
            shared: Arc::clone(&shared),
            tls: tls_server.clone(),
            #[cfg(feature = "tls")]
            users: users.clone(),
        };
        let rx = pool_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker{index}"))
            .stack_size(256 * 1024)
            .spawn(move || w.run(rx))
            .map_err(|e| e.to_string())?;
        workers.push(handle);
    }
    drop(pool_rx);
    let _ = &users;
    let poll = mio::Poll::new().map_err(|e| e.to_string())?;
    let waker = mio::Waker::new(poll.registry(), acceptor::WAKE).map_err(|e| e.to_string())?;
    let acceptor = Acceptor {
        poll,
        listeners,
        pool: pool_tx,
        shared: Arc::clone(&shared),
        max_connections: config.max_connections,
    };
    let acceptor = std::thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || acceptor.run())
        .map_err(|e| e.to_string())?;

    if let Some(t) = trust {
        log::info!(
            "relay: smarthost TLS {:?}, trusting {t}",
            config.smarthost_tls
        );
    } else {
        log::info!("relay: smarthost connection is plain TCP (smarthost_tls none)");
    }
    if config.smarthost_tls != SmarthostTls::None && !config.smarthost_tls_verify {
        log::warn!(
            "smarthost_tls_verify no: the smarthost's certificate is NOT verified; anyone on the path can read and change mail"
        );
    }
    let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
    log::info!(
        "started: listening on {}, relaying to {}, spool {}, {} workers",
        listen.join(" "),
        config.smarthost,
        config.spool.display(),
        config.workers
    );

    // Every listener is bound and the spool is open: ready (systemd Type=notify).
    smtp_relayd::notify::notify(&format!(
        "READY=1\nSTATUS=listening on {}",
        listen.join(" ")
    ));
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                log::info!("SIGHUP received: reload is not supported; restart to apply changes")
            }
            _ => {
                log::info!("signal {sig} received: shutting down");
                break;
            }
        }
    }

    smtp_relayd::notify::notify("STOPPING=1");
    // Stop accepting; end idle sessions; let transactions finish within the grace.
    shared.shutting_down.store(true, Ordering::SeqCst);
    let _ = waker.wake();
    match acceptor.join() {
        Ok(Err(e)) => log::error!("acceptor: {e}"),
        Err(_) => log::error!("acceptor panicked"),
        Ok(Ok(())) => {}
    }
    let deadline = Instant::now() + config.shutdown_grace;
    while workers.iter().any(|w| !w.is_finished()) {
        shared.close_sessions(true);
        if Instant::now() >= deadline {
            let n = shared.close_sessions(false);
            if n > 0 {
                log::warn!(
                    "grace period over; closing {n} session(s) in progress (no 250 was given for their messages)"
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in workers {
        let _ = w.join();
    }
    stop_relay.store(true, Ordering::SeqCst);
    let _ = relay_tx.try_send(Control::Wake);
    drop(relay_tx);
    let _ = relay.join();
    log::info!("stopped");
    Ok(())
}
