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
       smtp-relayd sendmail [sendmail options] [recipient...]   (also as a link named sendmail)
       smtp-relayd queue [-c FILE] [list | show ID | flush | delete ID | retry-failed ID|all]   (mailq)

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

/// The config for the sendmail and queue commands: `-c`, else `$SMTP_RELAYD_CONFIG`,
/// else the default.
fn tool_config(explicit: Option<PathBuf>) -> Result<(Config, Option<TlsClient>), ExitCode> {
    let path = explicit
        .or_else(|| std::env::var_os("SMTP_RELAYD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = Config::load(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })?;
    let tls = smarthost_tls(&config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })?;
    Ok((config, tls))
}

fn sendmail_main(args: &[String]) -> ExitCode {
    use smtp_relayd::sendmail::{args::Mode, submit};
    let opts = match smtp_relayd::sendmail::args::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let (config, tls) = match tool_config(opts.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    smtp_relayd::logger::init_level(
        smtp_relayd::logger::Target::Stderr,
        config.syslog_socket.clone(),
        if opts.verbose { "info" } else { "warn" },
    );
    match opts.mode {
        Mode::Deliver => match submit::submit(&config, &opts, std::io::stdin().lock()) {
            Ok(id) => {
                if opts.verbose {
                    println!("sendmail: queued as {id}");
                }
                ExitCode::SUCCESS
            }
            Err(submit::Failure(code, msg)) => {
                eprintln!("sendmail: {msg}");
                ExitCode::from(code)
            }
        },
        Mode::List => queue_run(&config, tls, &["list".to_string()]),
        Mode::Flush => queue_run(&config, tls, &["flush".to_string()]),
        Mode::Smtp => smtp_relayd::sendmail::stdio::serve(&config),
    }
}

fn queue_main(args: &[String]) -> ExitCode {
    // Usage needs no configuration.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{QUEUE_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (explicit, rest) = match args {
        [c, file, rest @ ..] if c == "-c" => (Some(PathBuf::from(file)), rest),
        rest => (None, rest),
    };
    let (config, tls) = match tool_config(explicit) {
        Ok(c) => c,
        Err(code) => return code,
    };
    smtp_relayd::logger::init_level(
        smtp_relayd::logger::Target::Stderr,
        config.syslog_socket.clone(),
        "info",
    );
    queue_run(&config, tls, rest)
}

const QUEUE_USAGE: &str =
    "usage: smtp-relayd queue [-c FILE] [list | show ID | flush | delete ID | retry-failed ID|all]";

fn queue_run(config: &Config, tls: Option<TlsClient>, args: &[String]) -> ExitCode {
    use QueueOutput::{Listing, Told};
    use smtp_relayd::relay::{Answer, Request};
    use smtp_relayd::sendmail::queue;
    let spool = match smtp_relayd::spool::Spool::attach(&config.spool) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("queue: cannot open spool {}: {e}", config.spool.display());
            return ExitCode::from(73);
        }
    };
    let id = |s: &String| smtp_relayd::spool::QueueId::parse(s);
    let args: Vec<&String> = args.iter().collect();
    let result = match args.as_slice() {
        // Listings are printed as they are.
        [] => queue::list(&spool).map(Listing),
        [c] if *c == "list" => queue::list(&spool).map(Listing),
        [c, i] if *c == "show" => queue::show(&spool, i).map(Listing),
        [c] if *c == "flush" => queue::command(config, tls, spool, Request::Flush).map(Told),
        [c, i] if *c == "delete" && id(i).is_some() => {
            queue::command(config, tls, spool, Request::Delete(id(i).unwrap())).map(Told)
        }
        [c, a] if *c == "retry-failed" && *a == "all" => {
            queue::command(config, tls, spool, Request::RetryFailed(None)).map(Told)
        }
        [c, i] if *c == "retry-failed" && id(i).is_some() => {
            queue::command(config, tls, spool, Request::RetryFailed(id(i))).map(Told)
        }
        _ => {
            eprintln!("{QUEUE_USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match result {
        Ok(Listing(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Told(Answer::Done(text))) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Told(Answer::Failed(text))) | Err(text) => {
            eprintln!("queue: {text}");
            ExitCode::from(1)
        }
    }
}

/// What a queue command prints: a listing, or the relay's answer to a command.
enum QueueOutput {
    Listing(String),
    Told(smtp_relayd::relay::Answer),
}

fn main() -> ExitCode {
    // Called as `sendmail` or `mailq` (a link), or with those as the first argument.
    let argv: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(v) => v,
        Err(_) => {
            eprintln!("smtp-relayd: arguments must be UTF-8");
            return ExitCode::from(EX_USAGE);
        }
    };
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    match (name.as_str(), argv.get(1).map(String::as_str)) {
        ("sendmail", _) => return sendmail_main(&argv[1..]),
        ("mailq", _) => return queue_main(&["list".to_string()]),
        (_, Some("sendmail")) => return sendmail_main(&argv[2..]),
        (_, Some("queue")) => return queue_main(&argv[2..]),
        _ => {}
    }
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
    if let Err(e) = check_user(&config, args.check) {
        eprintln!("{e}");
        return ExitCode::from(EX_CONFIG);
    }
    let policy = match config.policy() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check {
        print!("# {}: OK\n{}", args.config.display(), config.effective());
        if !policy.aliases.is_empty() {
            println!("# aliases: {} name(s)", policy.aliases.len());
        }
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
    match serve(config, policy, tls, tls_server, users) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(target: "fatal", "{e}");
            ExitCode::from(1)
        }
    }
}

/// `user NAME` must exist, and be able to read what it reads after the drop: the
/// smarthost password file, read at each connection (0600 or stricter, so NAME must
/// own it). Checked at `--check`, and at a start as root (without root there is no
/// drop: `user` is then ignored).
fn check_user(config: &Config, checking: bool) -> Result<(), String> {
    let Some(user) = &config.user else {
        return Ok(());
    };
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let ids = smtp_relayd::privileges::lookup(&passwd, user)
        .ok_or_else(|| config.error_at("user", &format!("user '{user}' is not in /etc/passwd")))?;
    if let Some(path) = config
        .smarthost_password_file
        .as_ref()
        .filter(|_| checking || smtp_relayd::privileges::is_root())
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(path)
            .map_err(|e| {
                config.error_at(
                    "smarthost_password_file",
                    &format!("{}: {e}", path.display()),
                )
            })?
            .uid();
        if ids.uid != 0 && owner != ids.uid {
            return Err(config.error_at(
                "smarthost_password_file",
                &format!(
                    "{} is owned by uid {owner}, so user {user} (uid {}) will not be able to read it                      after dropping root: chown {user} {}",
                    path.display(),
                    ids.uid,
                    path.display()
                ),
            ));
        }
    }
    Ok(())
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
        return TlsClient::new(config).map(Some).map_err(|e| {
            let key = if config.smarthost_ca_file.is_some() {
                "smarthost_ca_file"
            } else {
                "smarthost_tls"
            };
            config.error_at(key, &e)
        });
    }
    let _ = (config, SmarthostTls::None);
    Ok(None)
}

/// The server certificate for STARTTLS and `tls` listeners, loaded (and so checked) first.
fn server_tls(config: &Config) -> Result<Option<TlsServer>, String> {
    #[cfg(feature = "tls")]
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return TlsServer::new(cert, key).map(Some).map_err(|e| {
            let which = if e.starts_with(&key.display().to_string()) {
                "tls_key"
            } else {
                "tls_cert"
            };
            config.error_at(which, &e)
        });
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
    policy: Arc<smtp_relayd::protocol::policy::Policy>,
    tls: Option<TlsClient>,
    tls_server: Option<TlsServer>,
    users: Users,
) -> Result<(), String> {
    let trust = describe_tls(&tls);
    let config = Arc::new(config);
    // First of all: a second daemon on this spool stops here, having changed nothing.
    let _lock = smtp_relayd::spool::DaemonLock::take(&config.spool)?;
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
    // Queue commands and sendmail's wake-ups, for the relay thread.
    let control_path = smtp_relayd::relay::control_path(&spool);
    let _ = std::fs::remove_file(&control_path);
    let control = std::os::unix::net::UnixDatagram::bind(&control_path)
        .map_err(|e| format!("cannot bind {}: {e}", control_path.display()))?;
    // Registered before any thread starts, so that no thread dies of these signals.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot set up signals: {e}"))?;

    let shared = Arc::new(Shared::new(config.workers, config.rate_limit));
    let stop_relay = Arc::new(AtomicBool::new(false));
    let rescan = Arc::new(AtomicBool::new(false));
    // Every slot is made (and its memory touched) when the channel is: 256 ids is
    // plenty, as a full channel only makes the relay re-read queue/.
    let (relay_tx, relay_rx) = crossbeam_channel::bounded::<Control>(256);
    // The hand-off queue: connections beyond the busy workers wait here, up to
    // max_connections in all; past that the acceptor answers 421.
    let (pool_tx, pool_rx) = crossbeam_channel::bounded(config.max_connections - config.workers);

    let upstream_tls = tls.clone();
    let relay = {
        let (config, spool, stop, rescan) = (
            Arc::clone(&config),
            Arc::clone(&spool),
            Arc::clone(&stop_relay),
            Arc::clone(&rescan),
        );
        std::thread::Builder::new()
            .name("relay".into())
            .stack_size(256 * 1024)
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
    {
        let relay_tx = relay_tx.clone();
        std::thread::Builder::new()
            .name("control".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    match smtp_relayd::sendmail::queue::receive(&control) {
                        Ok(Some((req, reply_to))) => {
                            if relay_tx
                                .send(Control::Request(Box::new((req, reply_to))))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(None) => log::warn!("control: ignored a malformed request"),
                        Err(e) => {
                            log::error!("control: {e}");
                            break;
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
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
            upstream_tls: upstream_tls.clone(),
            policy: Arc::clone(&policy),
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
        max_connections_per_ip: config.max_connections_per_ip(),
        exempt: config.connection_limit_exempt.clone(),
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
        "started: listening on {}, relaying to {}, spool {}, {} workers{}",
        listen.join(" "),
        config.smarthost,
        config.spool.display(),
        config.workers,
        if config.mode == smtp_relayd::config::Mode::Passthrough {
            ", mode passthrough (clients get the smarthost's replies; nothing is spooled)"
        } else {
            ""
        }
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
