//! smtp-relayd: the daemon's entry point. Parses the command line, loads the
//! configuration, binds the listeners, starts the threads, and runs the shutdown
//! sequence on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use smtp_relayd::config::Config;
use smtp_relayd::relay::Hosts;
use smtp_relayd::server::daemon::{Daemon, Parts};
use smtp_relayd::server::worker::TlsServer;

/// sysexits.h
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;
#[cfg(feature = "tls")]
const EX_TEMPFAIL: u8 = 75;

const DEFAULT_CONFIG: &str = "/etc/smtp-relayd.conf";

const HELP: &str = "\
smtp-relayd: a small, durable SMTP relay for embedded Linux

Usage: smtp-relayd [-c FILE] [--check]
       smtp-relayd sendmail [sendmail options] [recipient...]   (also as a link named sendmail)
       smtp-relayd queue [-c FILE] [list | show ID | flush | delete ID | retry-failed ID|all]   (mailq)
       smtp-relayd oauth [-c FILE] login | token   (OAuth2: first sign-in; fetch one token as a test)
       smtp-relayd test [-c FILE] ADDR [SMARTHOST] [--from ADDR]   (send a test message now, step by step)
       smtp-relayd status [-c FILE] [--json] [--warn-age D] [--crit-age D]   (exit 0 ok, 1 warning, 2 critical, 3 unknown)

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
fn tool_config(explicit: Option<PathBuf>) -> Result<(Config, Hosts), ExitCode> {
    let path = explicit
        .or_else(|| std::env::var_os("SMTP_RELAYD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = Config::load(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })?;
    let hosts = smtp_relayd::relay::hosts::build(&config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })?;
    Ok((config, hosts))
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
    let (explicit, rest) = split_config_arg(args);
    match tool_setup(explicit, "info") {
        Ok((config, tls)) => queue_run(&config, tls, rest),
        Err(code) => code,
    }
}

/// A leading `-c FILE` (or `--config FILE`), and the arguments after it.
fn split_config_arg(args: &[String]) -> (Option<PathBuf>, &[String]) {
    match args {
        [c, file, rest @ ..] if c == "-c" || c == "--config" => (Some(PathBuf::from(file)), rest),
        rest => (None, rest),
    }
}

/// The config and TLS client of a tool command, with its log lines to stderr at `level`.
fn tool_setup(explicit: Option<PathBuf>, level: &str) -> Result<(Config, Hosts), ExitCode> {
    let (config, tls) = tool_config(explicit)?;
    smtp_relayd::logger::init_level(
        smtp_relayd::logger::Target::Stderr,
        config.syslog_socket.clone(),
        level,
    );
    Ok((config, tls))
}

const TEST_USAGE: &str = "usage: smtp-relayd test [-c FILE] ADDR [SMARTHOST] [--from ADDR]
  sends a short test message to ADDR through the smarthost now (not through the queue),
  printing each step: the connection, TLS and the certificate, AUTH, every reply;
  when a step fails it says what to check (the password, the clock, a certificate,
  a blocked port)
  SMARTHOST  which one (default: the first of the route ADDR takes)
  --from     the sender (default: rewrite_sender, else smarthost_user, else sendmail_from)
exit: 0 accepted, 1 refused or failed, 64 bad usage, 78 bad config";

/// `smtp-relayd test ADDR`.
fn test_main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{TEST_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (explicit, rest) = split_config_arg(args);
    let mut words = Vec::new();
    let mut from = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" => match it.next() {
                Some(f) => from = Some(f.clone()),
                None => {
                    eprintln!("smtp-relayd test: --from needs an ADDR\n{TEST_USAGE}");
                    return ExitCode::from(EX_USAGE);
                }
            },
            w => words.push(w.to_string()),
        }
    }
    let (to, name) = match &words[..] {
        [to] => (to.clone(), None),
        [to, name] => (to.clone(), Some(name.clone())),
        _ => {
            eprintln!("smtp-relayd test: which address?\n{TEST_USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if smtp_relayd::protocol::address::check_mailbox(to.as_bytes(), true).is_err() {
        eprintln!("smtp-relayd test: '{to}' is not an address");
        return ExitCode::from(EX_USAGE);
    }
    let (config, hosts) = match tool_setup(explicit, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = match name {
        Some(n) => match hosts.iter().find(|h| h.name() == n) {
            Some(h) => h,
            None => {
                let all: Vec<&str> = hosts.iter().map(|h| h.name()).collect();
                eprintln!(
                    "smtp-relayd test: no smarthost named '{n}' (there are: {})",
                    all.join(", ")
                );
                return ExitCode::from(EX_USAGE);
            }
        },
        None => {
            let sender = smtp_relayd::probe::sender(&config, &hosts[0], from.as_deref());
            let route = config.route_of(sender.as_bytes(), to.as_bytes());
            &hosts[config.routes[route].hosts[0]]
        }
    };
    if smtp_relayd::probe::run(&config, host, &to, from.as_deref()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

const STATUS_USAGE: &str =
    "usage: smtp-relayd status [-c FILE] [--json] [--warn-age DURATION] [--crit-age DURATION]
  the daemon, the queue, each smarthost and the last delivery, on one screen
  --json        the same as one JSON object
  --warn-age D  a queued message older than D is a warning (default 1h)
  --crit-age D  ... and older than D critical (default 1d)
exit: 0 ok; 1 warning (old mail, a smarthost failing, mail in failed/);
      2 critical (no daemon, very old mail, every smarthost failing); 3 unknown";

/// `smtp-relayd status`: exit codes as a Nagios plugin's.
fn status_main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{STATUS_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (explicit, rest) = split_config_arg(args);
    let mut limits = smtp_relayd::status::Limits::default();
    let mut json = false;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let duration = |v: Option<&String>| {
            v.ok_or_else(|| format!("{a} needs a DURATION"))
                .and_then(|v| smtp_relayd::config::parse_duration(v))
        };
        let r = match a.as_str() {
            "--json" => {
                json = true;
                Ok(())
            }
            "--warn-age" => duration(it.next()).map(|d| limits.warn = d),
            "--crit-age" => duration(it.next()).map(|d| limits.crit = d),
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = r {
            eprintln!("smtp-relayd status: {e}\n{STATUS_USAGE}");
            return ExitCode::from(3);
        }
    }
    let path = explicit
        .or_else(|| std::env::var_os("SMTP_RELAYD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            println!("smtp-relayd UNKNOWN: {e}");
            return ExitCode::from(3);
        }
    };
    match smtp_relayd::status::report(&config, limits) {
        Ok(r) => {
            print!("{}", if json { r.json() } else { r.text() });
            ExitCode::from(r.code())
        }
        Err(e) => {
            println!("smtp-relayd UNKNOWN: {e}");
            ExitCode::from(3)
        }
    }
}

const OAUTH_USAGE: &str = "usage: smtp-relayd oauth [-c FILE] login | token [SMARTHOST]
  login   sign in once with the device code flow (RFC 8628): prints a URL and a code
          to enter in any browser, waits, and writes smarthost_oauth_refresh_token_file
  token   gets one access token as the relay would, and prints only its expiry
  SMARTHOST  the named smarthost to do it for (needed when several use OAuth2)";

/// `smtp-relayd oauth login|token`.
fn oauth_main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{OAUTH_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (explicit, rest) = split_config_arg(args);
    let (what, name) = match rest {
        [what] => (what, None),
        [what, name] => (what, Some(name.as_str())),
        _ => {
            eprintln!("{OAUTH_USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if what != "login" && what != "token" {
        eprintln!("{OAUTH_USAGE}");
        return ExitCode::from(EX_USAGE);
    }
    let (config, hosts) = match tool_setup(explicit, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = match oauth_host(&config, &hosts, name) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("smtp-relayd oauth: {}: {e}", config.path.display());
            return ExitCode::from(EX_CONFIG);
        }
    };
    #[cfg(feature = "tls")]
    {
        let Some(source) = host.tls.as_ref().and_then(|t| t.tokens.as_ref()) else {
            eprintln!(
                "smtp-relayd oauth: {}: smarthost_auth is password; set smarthost_auth xoauth2 \
                 or oauthbearer and the smarthost_oauth_* keys",
                config.path.display()
            );
            return ExitCode::from(EX_CONFIG);
        };
        let sh = &host.conf;
        match what.as_str() {
            "token" => match source.fresh() {
                Ok(t) => {
                    match t.expires_in {
                        Some(s) => println!(
                            "OK: got an access token for {}; it expires in {s}s (at {})",
                            sh.user.as_deref().unwrap_or_default(),
                            smtp_relayd::time::iso8601(smtp_relayd::time::now_unix() + s)
                        ),
                        None => println!(
                            "OK: got an access token for {} (its expiry is not known)",
                            sh.user.as_deref().unwrap_or_default()
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(reply) => {
                    eprintln!("smtp-relayd oauth token: {reply}");
                    ExitCode::from(EX_TEMPFAIL)
                }
            },
            "login" => {
                if sh.oauth.grant() != smtp_relayd::config::Grant::RefreshToken {
                    eprintln!(
                        "smtp-relayd oauth login: needs smarthost_oauth_token_url, \
                         smarthost_oauth_client_id and smarthost_oauth_refresh_token_file"
                    );
                    return ExitCode::from(EX_CONFIG);
                }
                match source.login(&mut std::io::stdout()) {
                    Ok(()) => match give_token_file(&config, sh) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("smtp-relayd oauth login: {e}");
                            ExitCode::from(EX_CONFIG)
                        }
                    },
                    Err(e) => {
                        eprintln!("smtp-relayd oauth login: {e}");
                        ExitCode::from(EX_TEMPFAIL)
                    }
                }
            }
            _ => {
                eprintln!("{OAUTH_USAGE}");
                ExitCode::from(EX_USAGE)
            }
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (what, config, host);
        eprintln!("smtp-relayd oauth: this smtp-relayd was built without TLS, and OAuth2 needs it");
        ExitCode::from(EX_CONFIG)
    }
}

/// The smarthost `oauth` works for: the one named, else the only one with OAuth2
/// (or, with none, the first, for the error that follows).
fn oauth_host<'a>(
    config: &Config,
    hosts: &'a Hosts,
    name: Option<&str>,
) -> Result<&'a smtp_relayd::relay::Host, String> {
    use smtp_relayd::config::SmarthostAuth;
    let names = || {
        let n: Vec<&str> = hosts.iter().map(|h| h.name()).collect();
        n.join(", ")
    };
    if let Some(name) = name {
        return hosts
            .iter()
            .find(|h| h.name() == name)
            .ok_or_else(|| format!("no smarthost named '{name}' (there are: {})", names()));
    }
    let oauth: Vec<_> = hosts
        .iter()
        .filter(|h| h.conf.auth != SmarthostAuth::Password)
        .collect();
    match oauth[..] {
        [one] => Ok(one),
        [] => Ok(&hosts[0]),
        _ => {
            let _ = config;
            let n: Vec<&str> = oauth.iter().map(|h| h.name()).collect();
            Err(format!(
                "several smarthosts use OAuth2 ({}): name one, e.g. smtp-relayd oauth login {}",
                n.join(", "),
                n[0]
            ))
        }
    }
}

/// After `oauth login` as root with `user NAME`: the refresh token file belongs to
/// NAME, who reads it and replaces it when it rotates.
#[cfg(feature = "tls")]
fn give_token_file(config: &Config, sh: &smtp_relayd::config::Smarthost) -> Result<(), String> {
    let (Some(user), Some(path)) = (&config.user, &sh.oauth.refresh_token_file) else {
        return Ok(());
    };
    if !smtp_relayd::privileges::is_root() {
        return Ok(());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let ids = smtp_relayd::privileges::lookup(&passwd, user)
        .ok_or_else(|| format!("user '{user}' is not in /etc/passwd"))?;
    std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid))
        .map_err(|e| format!("chown {user} {}: {e}", path.display()))?;
    println!("Given to {user}, who runs the relay.");
    Ok(())
}

const QUEUE_USAGE: &str =
    "usage: smtp-relayd queue [-c FILE] [list | show ID | flush | delete ID | retry-failed ID|all]";

fn queue_run(config: &Config, tls: Hosts, args: &[String]) -> ExitCode {
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
        [] => queue::list(&spool, config).map(Listing),
        [c] if *c == "list" => queue::list(&spool, config).map(Listing),
        [c, i] if *c == "show" => queue::show(&spool, config, i).map(Listing),
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
        (_, Some("oauth")) => return oauth_main(&argv[2..]),
        (_, Some("status")) => return status_main(&argv[2..]),
        (_, Some("test")) => return test_main(&argv[2..]),
        // `smtp-relayd -c FILE queue|oauth ...` works too.
        (_, Some("-c" | "--config")) if argv.len() > 3 => {
            let mut rest = vec!["-c".to_string(), argv[2].clone()];
            rest.extend_from_slice(&argv[4..]);
            match argv[3].as_str() {
                "queue" => return queue_main(&rest),
                "oauth" => return oauth_main(&rest),
                "status" => return status_main(&rest),
                "test" => return test_main(&rest),
                _ => {}
            }
        }
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
    let hosts = match smtp_relayd::relay::hosts::build(&config) {
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
        for h in hosts.iter() {
            if let Some(t) = describe_tls(h) {
                match h.conf.named {
                    true => println!("# smarthost {} TLS: trusting {t}", h.name()),
                    false => println!("# smarthost TLS: trusting {t}"),
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    smtp_relayd::logger::init(config.log, config.syslog_socket.clone());
    #[cfg(not(feature = "tls"))]
    let users = None;
    let parts = Parts {
        config,
        policy,
        hosts,
        tls_server,
        users,
    };
    match serve(parts, &args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(target: smtp_relayd::logger::FATAL, "{e}");
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
    let mut files = Vec::new();
    for h in &config.smarthosts {
        for (key, path) in h.secret_files() {
            // Not there yet: `oauth login` makes it (and gives it to NAME).
            let path = path
                .clone()
                .filter(|p| p.exists() || key != "smarthost_oauth_refresh_token_file");
            files.push((h, key, path));
        }
    }
    for (h, key, path) in files {
        let Some(path) = path
            .as_ref()
            .filter(|_| checking || smtp_relayd::privileges::is_root())
        else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(path)
            .map_err(|e| h.error_at(config, key, &format!("{}: {e}", path.display())))?
            .uid();
        if ids.uid != 0 && owner != ids.uid {
            return Err(h.error_at(
                config,
                key,
                &format!(
                    "{} is owned by uid {owner}, so user {user} (uid {}) will not be able to read it after dropping root: chown {user} {}",
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

fn describe_tls(host: &smtp_relayd::relay::Host) -> Option<String> {
    #[cfg(feature = "tls")]
    return host.tls.as_ref().map(|t| t.trust.clone());
    #[cfg(not(feature = "tls"))]
    {
        let _ = host;
        None
    }
}

/// What a reload reads: the config, the aliases and users files, the certificates,
/// each checked as at start. An error is `FILE:LINE: what`.
fn load_parts(path: &std::path::Path) -> Result<Parts, String> {
    let config = Config::load(path)?;
    let hosts = smtp_relayd::relay::hosts::build(&config)?;
    let tls_server = server_tls(&config)?;
    #[cfg(feature = "tls")]
    let users = config
        .auth_users
        .as_deref()
        .map(smtp_relayd::auth::Users::load)
        .transpose()?
        .map(Arc::new);
    #[cfg(not(feature = "tls"))]
    let users = None;
    let policy = Arc::new(config.policy()?);
    Ok(Parts {
        config,
        policy,
        hosts,
        tls_server,
        users,
    })
}

/// Starts the daemon, waits for SIGTERM or SIGINT, and stops it; SIGHUP reloads.
fn serve(parts: Parts, path: &std::path::Path) -> Result<(), String> {
    // Registered before any thread starts, so that no thread dies of these signals.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot set up signals: {e}"))?;
    let mut daemon = Daemon::start(parts, |config| match &config.user {
        Some(user) => become_user(user, config),
        None => Ok(()),
    })?;
    let listen: Vec<String> = daemon.local_addrs().iter().map(|a| a.to_string()).collect();
    // Every listener is bound and the spool is open: ready (systemd Type=notify).
    smtp_relayd::notify::notify(&format!(
        "READY=1\nSTATUS=listening on {}",
        listen.join(" ")
    ));
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                log::info!("SIGHUP received: reloading {}", path.display());
                smtp_relayd::notify::notify("RELOADING=1");
                match load_parts(path) {
                    Ok(parts) => daemon.reload(parts),
                    Err(e) => log::error!("reload refused: {e}; the running settings stay"),
                }
                smtp_relayd::notify::notify("READY=1");
            }
            _ => {
                log::info!("signal {sig} received: shutting down");
                break;
            }
        }
    }
    smtp_relayd::notify::notify("STOPPING=1");
    daemon.shutdown();
    Ok(())
}
