//! What of a command line the agent keeps and shows: joined, cut where the read was cut,
//! and with secret-looking values redacted before anything stores them. Incidents are
//! served over HTTP and land in logs and alert notifications; `--password=…` must not.
use crate::procfs::Cmdline;

pub const REDACTED: &str = "[redacted]";
pub const CUT: &str = "[…cut]";

/// Option and variable names whose values are secrets, matched case-insensitively on the
/// name with `-` and `_` removed, anywhere in it (`--db-password`, `AWS_SECRET_ACCESS_KEY`).
const SECRET_NAMES: [&str; 13] = [
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "auth",
    "cookie",
    "session",
];

/// Programs whose `-pVALUE` is a password (the MySQL family), not a port or a flag set.
const JOINED_PASSWORD_PROGRAMS: [&str; 2] = ["mysql", "mariadb"];

/// The command line as the agent shows it; see the README for the rules.
pub fn shown(cmdline: &Cmdline) -> String {
    let program = cmdline
        .args
        .first()
        .map(|arg| arg.rsplit('/').next().unwrap_or(arg))
        .unwrap_or_default();
    let joined_password = JOINED_PASSWORD_PROGRAMS
        .iter()
        .any(|name| program.starts_with(name));
    let mut out: Vec<String> = Vec::with_capacity(cmdline.args.len() + 1);
    let mut value_is_secret = false;
    let mut value_is_userinfo = false;
    for arg in &cmdline.args {
        let shown = if value_is_secret {
            REDACTED.to_string()
        } else if value_is_userinfo {
            redact_after(arg, ':')
        } else {
            redact_arg(arg, joined_password)
        };
        value_is_secret = takes_secret_value(arg);
        value_is_userinfo = matches!(arg.as_str(), "-u" | "--user" | "--proxy-user");
        out.push(shown);
    }
    if cmdline.truncated {
        out.push(CUT.to_string());
    }
    out.join(" ")
}

/// `--password VALUE`, `-p VALUE`, `--header VALUE` (which may carry a token).
fn takes_secret_value(arg: &str) -> bool {
    if matches!(arg, "-p" | "-H" | "--header") {
        return true;
    }
    let Some(name) = arg.strip_prefix('-') else {
        return false;
    };
    !name.contains('=') && is_secret_name(name)
}

fn redact_arg(arg: &str, joined_password: bool) -> String {
    if let Some((name, _)) = arg.split_once('=') {
        if is_secret_name(name) {
            return format!("{name}={REDACTED}");
        }
    }
    if joined_password && arg.len() > 2 && arg.starts_with("-p") && !arg.starts_with("--") {
        return format!("-p{REDACTED}");
    }
    let lower = arg.to_ascii_lowercase();
    for marker in ["authorization:", "bearer "] {
        if let Some(at) = lower.find(marker) {
            return format!("{}{REDACTED}", &arg[..at + marker.len()]);
        }
    }
    redact_url_passwords(arg)
}

/// `scheme://user:secret@host` → `scheme://user:[redacted]@host`, for every URL in `arg`.
fn redact_url_passwords(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest.find(['/', '?', '#', ' ']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority
            .rfind('@')
            .map(|at| (&authority[..at], &authority[at..]))
        {
            Some((userinfo, host)) if userinfo.contains(':') => {
                out.push_str(&redact_after(userinfo, ':'));
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &rest[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `user:secret` → `user:[redacted]`; unchanged without the separator.
fn redact_after(text: &str, separator: char) -> String {
    match text.split_once(separator) {
        Some((kept, _)) => format!("{kept}{separator}{REDACTED}"),
        None => text.to_string(),
    }
}

fn is_secret_name(name: &str) -> bool {
    let name: String = name
        .trim_start_matches('-')
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    !name.is_empty() && SECRET_NAMES.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(args: &[&str]) -> String {
        shown(&Cmdline {
            args: args.iter().map(|a| a.to_string()).collect(),
            truncated: false,
        })
    }

    #[test]
    fn options_and_variables_named_like_secrets_lose_their_values() {
        assert_eq!(
            show(&[
                "app",
                "--password=hunter2",
                "--db-token",
                "abc",
                "-v",
                "out.txt"
            ]),
            "app --password=[redacted] --db-token [redacted] -v out.txt"
        );
        assert_eq!(
            show(&[
                "env",
                "AWS_SECRET_ACCESS_KEY=xyz",
                "HOME=/home/u",
                "api_key=k"
            ]),
            "env AWS_SECRET_ACCESS_KEY=[redacted] HOME=/home/u api_key=[redacted]"
        );
        assert_eq!(show(&["x", "-p", "s3cret"]), "x -p [redacted]");
    }

    #[test]
    fn joined_short_password_only_for_mysql_clients() {
        assert_eq!(
            show(&["/usr/bin/mysql", "-uroot", "-phunter2"]),
            "/usr/bin/mysql -uroot -p[redacted]"
        );
        assert_eq!(show(&["cc", "-pthread", "a.c"]), "cc -pthread a.c");
    }

    #[test]
    fn urls_headers_and_user_passwords() {
        assert_eq!(
            show(&[
                "git",
                "clone",
                "https://bob:pw@example.com/r.git",
                "mysql://h/db"
            ]),
            "git clone https://bob:[redacted]@example.com/r.git mysql://h/db"
        );
        assert_eq!(
            show(&[
                "curl",
                "-H",
                "Authorization: Bearer t0k",
                "-u",
                "bob:pw",
                "http://h"
            ]),
            "curl -H [redacted] -u bob:[redacted] http://h"
        );
        assert_eq!(
            show(&["curl", "--oauth2-bearer", "t", "Authorization: Basic Ym9i"]),
            "curl --oauth2-bearer [redacted] Authorization:[redacted]"
        );
    }

    #[test]
    fn cut_command_lines_say_so() {
        let cmdline = Cmdline {
            args: vec!["python3".into(), "build.py".into()],
            truncated: true,
        };
        assert_eq!(shown(&cmdline), format!("python3 build.py {CUT}"));
        assert_eq!(shown(&Cmdline::default()), "");
    }
}
