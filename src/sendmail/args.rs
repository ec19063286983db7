//! The sendmail command line, as scripts written for Sendmail, Postfix, nullmailer and
//! msmtp use it. Options come first; the rest are recipients.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `-bm`: read a message from stdin and queue it (the default).
    #[default]
    Deliver,
    /// `-bp`: list the queue (= mailq).
    List,
    /// `-q`: retry the queue now.
    Flush,
    /// `-bs`: SMTP on stdin and stdout.
    Smtp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub mode: Mode,
    /// `-t`: recipients from To, Cc and Bcc (added to those on the command line).
    pub extract_recipients: bool,
    /// `-i`, `-oi`: a line with a lone dot does not end the message.
    pub ignore_dots: bool,
    /// `-f ADDR`, `-r ADDR`: the envelope sender.
    pub sender: Option<String>,
    /// `-F NAME`: the full name for a generated From header.
    pub full_name: Option<String>,
    pub verbose: bool,
    pub recipients: Vec<String>,
}

/// Parses the arguments after the program name. `Err` is a usage error (exit 64).
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            i -= 1;
            break;
        }
        let flag = &arg[1..2];
        let rest = &arg[2..];
        // A value attached (`-fADDR`) or in the next argument (`-f ADDR`).
        let mut value = |name: &str| -> Result<String, String> {
            if !rest.is_empty() {
                return Ok(rest.to_string());
            }
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("option -{name} needs a value"))?;
            i += 1;
            Ok(v)
        };
        match flag {
            "t" if rest.is_empty() => o.extract_recipients = true,
            "i" if rest.is_empty() => o.ignore_dots = true,
            "v" if rest.is_empty() => o.verbose = true,
            "f" | "r" => o.sender = Some(value(flag)?),
            "F" => o.full_name = Some(value(flag)?),
            "c" => o.config = Some(PathBuf::from(value(flag)?)),
            "b" => {
                o.mode = match rest {
                    "m" => Mode::Deliver,
                    "p" => Mode::List,
                    "s" => Mode::Smtp,
                    _ => return Err(format!("-b{rest} is not supported (only -bm, -bp, -bs)")),
                }
            }
            // -q, -q30m, -qf...: run the queue now.
            "q" => o.mode = Mode::Flush,
            // -oi: like -i. Any other -oX (-oem, -odb, -odi, -oQ/dir...) changes nothing here.
            "o" => {
                if rest == "i" {
                    o.ignore_dots = true;
                }
            }
            // Harmless options of other MTAs, accepted and ignored; these take a value.
            "O" | "N" | "R" | "B" | "L" | "X" | "V" | "h" | "C" => {
                let _ = value(flag)?;
            }
            // -em, -ep, -U, -n, -m, -G, -Am...: nothing to do.
            "e" | "U" | "n" | "m" | "G" | "A" => {}
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    // Each remaining argument may itself be a comma-separated list.
    o.recipients = args[i..].iter().map(|s| s.to_string()).collect();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_as_scripts_use_them() {
        let o = p(&[
            "-t",
            "-i",
            "-f",
            "cron@box",
            "-F",
            "Cron Daemon",
            "extra@x.org",
        ])
        .unwrap();
        assert!(o.extract_recipients && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("cron@box"));
        assert_eq!(o.full_name.as_deref(), Some("Cron Daemon"));
        assert_eq!(o.recipients, ["extra@x.org"]);

        let o = p(&[
            "-oi",
            "-oem",
            "-odi",
            "-odb",
            "-oQ/var/spool",
            "-Ox=y",
            "-O",
            "a=b",
            "-N",
            "never",
            "-R",
            "hdrs",
            "-B",
            "8BITMIME",
            "-U",
            "-em",
            "-fme@x",
            "-rmore@x",
            "--",
            "-dash@x.org",
        ])
        .unwrap();
        assert!(o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("more@x"));
        assert_eq!(o.recipients, ["-dash@x.org"]);
        assert_eq!(o.mode, Mode::Deliver);

        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::List);
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::Flush);
        assert_eq!(p(&["-q30m"]).unwrap().mode, Mode::Flush);
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-bm", "a@b"]).unwrap().mode, Mode::Deliver);
        assert_eq!(
            p(&["-c", "/etc/x.conf", "a@b"]).unwrap().config,
            Some(PathBuf::from("/etc/x.conf"))
        );
        assert!(p(&["-v", "a@b"]).unwrap().verbose);
        assert!(p(&["-bd"]).is_err());
        assert!(p(&["-Z"]).is_err());
        assert!(p(&["-f"]).is_err());
        assert!(p(&[]).unwrap().recipients.is_empty());
    }
}
