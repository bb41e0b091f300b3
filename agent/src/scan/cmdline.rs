//! What of a command line the agent keeps and shows: joined, cut where the read was cut,
//! and with secret-looking values redacted before anything stores them. Incidents are
//! served over HTTP and land in logs and alert notifications; `--password=…` must not.
use crate::procfs::{Cmdline, CMDLINE_MAX_BYTES};

pub const REDACTED: &str = "[redacted]";
pub const CUT: &str = "[…cut]";

/// Names whose values are secrets when they appear anywhere in an option or variable
/// name, case and `-`/`_`/`.` ignored (`--db-password`, `AWS_SECRET_ACCESS_KEY`, `apiKey`).
const SECRET_PARTS: [&str; 12] = [
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "sessionid",
    "cookie",
];

/// Short names that are secrets only as a whole word of the name (`--auth`, `-pass`,
/// `X_PWD`), so that `--author` or `--compass` stay readable.
const SECRET_WORDS: [&str; 8] = [
    "pwd", "pass", "passin", "passout", "auth", "bearer", "header", "key",
];

/// Programs whose short option takes a password: `-pSECRET`/`-p SECRET` for the MySQL
/// family and sshpass, `-a SECRET` for redis-cli. Elsewhere `-p` is a port or a flag
/// (`mkdir -p`, `ssh -p 22`) and stays.
const SHORT_PASSWORD_OPTIONS: [(&str, &str); 4] = [
    ("mysql", "-p"),
    ("mariadb", "-p"),
    ("sshpass", "-p"),
    ("redis-cli", "-a"),
];

/// Characters that end a value inside an argument (`a=1&password=x`, `host=h password=x`).
const VALUE_ENDS: [char; 7] = ['&', ';', ',', ' ', '\'', '"', '\t'];

/// The command line as the agent shows it; see the README for the rules.
pub fn shown(cmdline: &Cmdline) -> String {
    let program = cmdline
        .args
        .first()
        .map(|arg| arg.rsplit('/').next().unwrap_or(arg))
        .unwrap_or_default();
    let short_password = SHORT_PASSWORD_OPTIONS
        .iter()
        .find(|(name, _)| program.starts_with(name))
        .map(|(_, option)| *option);
    let mut args: &[String] = &cmdline.args;
    // A cut argument may be a secret whose name was cut off with the rest.
    if cmdline.truncated {
        args = args.split_last().map_or(args, |(_, kept)| kept);
    }
    let mut out: Vec<String> = Vec::with_capacity(args.len() + 1);
    let mut next = Next::Plain;
    for arg in args {
        out.push(match next {
            Next::Secret => REDACTED.to_string(),
            Next::UserInfo => redact_after(arg, ':'),
            Next::Plain => redact_arg(arg, short_password),
        });
        next = Next::after(arg, short_password);
    }
    if cmdline.truncated {
        out.push(CUT.to_string());
    }
    let mut shown = out.join(" ");
    // `-p a -p a …` grows by the markers: what is shown stays within what was read.
    if shown.len() > CMDLINE_MAX_BYTES + CUT.len() + 1 {
        let mut end = CMDLINE_MAX_BYTES;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push(' ');
        shown.push_str(CUT);
    }
    shown
}

/// What the argument after an option holds.
#[derive(Clone, Copy)]
enum Next {
    Plain,
    /// `--password VALUE`, `-H VALUE` (a header may carry a token).
    Secret,
    /// `-u user:password` (curl and others).
    UserInfo,
}

impl Next {
    fn after(arg: &str, short_password: Option<&str>) -> Self {
        if arg == "-H" || short_password == Some(arg) {
            return Self::Secret;
        }
        if matches!(arg, "-u" | "--user" | "--proxy-user") {
            return Self::UserInfo;
        }
        match arg.strip_prefix('-') {
            Some(name) if !name.contains('=') && is_secret_name(name) => Self::Secret,
            _ => Self::Plain,
        }
    }
}

fn redact_arg(arg: &str, short_password: Option<&str>) -> String {
    if let Some(option) = short_password {
        if arg.len() > option.len() && arg.starts_with(option) && !arg.starts_with("--") {
            return format!("{option}{REDACTED}");
        }
    }
    let lower = arg.to_ascii_lowercase();
    for marker in ["authorization:", "bearer "] {
        if let Some(at) = lower.find(marker) {
            return format!("{}{REDACTED}", &arg[..at + marker.len()]);
        }
    }
    redact_url_passwords(&redact_assignments(arg))
}

/// Every `NAME=VALUE` in `arg` whose name looks secret, wherever it stands: the whole
/// argument (`--token=x`, `API_KEY=x`: the value is all the rest), or inside one
/// (`host=db password=x`, `jdbc:…?user=u&password=x`: the value ends at a separator).
fn redact_assignments(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(equals) = rest.find('=') {
        let (before, after) = (&rest[..equals], &rest[equals + 1..]);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map_or(0, |at| at + 1);
        let whole_argument = out.is_empty() && name_start == 0;
        out.push_str(before);
        out.push('=');
        let value_end = if whole_argument {
            after.len()
        } else {
            after.find(VALUE_ENDS).unwrap_or(after.len())
        };
        if is_secret_name(&before[name_start..]) && value_end > 0 {
            out.push_str(REDACTED);
            rest = &after[value_end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
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
    let name = name.trim_start_matches('-').to_ascii_lowercase();
    let joined: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .collect();
    SECRET_PARTS.iter().any(|part| joined.contains(part))
        || name
            .split(['-', '_', '.'])
            .any(|word| SECRET_WORDS.contains(&word))
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
        assert_eq!(
            show(&["openssl", "enc", "-pass", "pass:x", "--author", "me"]),
            "openssl enc -pass [redacted] --author me"
        );
        assert_eq!(show(&["app", "--apiKey=k"]), "app --apiKey=[redacted]");
    }

    #[test]
    fn secrets_inside_an_argument_are_found_too() {
        assert_eq!(
            show(&["psql", "host=db user=u password=x sslmode=require"]),
            "psql host=db user=u password=[redacted] sslmode=require"
        );
        assert_eq!(
            show(&[
                "java",
                "--url=jdbc:postgresql://h/db?user=u&password=x&ssl=true"
            ]),
            "java --url=jdbc:postgresql://h/db?user=u&password=[redacted]&ssl=true"
        );
        assert_eq!(
            show(&["curl", "--header=X-Api-Key: k"]),
            "curl --header=[redacted]"
        );
    }

    #[test]
    fn short_password_options_only_where_they_are_passwords() {
        assert_eq!(
            show(&["/usr/bin/mysql", "-uroot", "-phunter2"]),
            "/usr/bin/mysql -uroot -p[redacted]"
        );
        assert_eq!(
            show(&["sshpass", "-p", "pw", "ssh", "h"]),
            "sshpass -p [redacted] ssh h"
        );
        assert_eq!(show(&["redis-cli", "-a", "pw"]), "redis-cli -a [redacted]");
        assert_eq!(show(&["mkdir", "-p", "/srv/x"]), "mkdir -p /srv/x");
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
    fn redaction_does_not_grow_a_command_line_past_the_bound() {
        let mut args = vec!["sshpass"];
        args.extend(std::iter::repeat_n("-p a", 1000).flat_map(|pair| pair.split(' ')));
        let shown = show(&args);
        assert!(
            shown.len() <= CMDLINE_MAX_BYTES + CUT.len() + 1,
            "{}",
            shown.len()
        );
        assert!(shown.ends_with(CUT));
    }

    #[test]
    fn cut_command_lines_say_so_and_drop_the_cut_argument() {
        let cmdline = Cmdline {
            args: vec!["curl".into(), "-v".into(), "https://bob:hunt".into()],
            truncated: true,
        };
        assert_eq!(shown(&cmdline), format!("curl -v {CUT}"));
        assert_eq!(shown(&Cmdline::default()), "");
    }
}
