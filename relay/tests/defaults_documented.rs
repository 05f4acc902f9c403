//! Each relay default is written in one place in the docs: the settings
//! table of `docs/relay.md`. This test holds that table to the binary's
//! `--help` and to the `outbox_relay::DEFAULT_*` constants, and names the
//! flag when they disagree or a flag is missing from either side.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// What `--help` or the docs table says about one flag.
#[derive(Debug, Default)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
    config_key: Option<String>,
}

/// Runs the real binary with nothing of the caller's environment but
/// `PATH`, so no `OUTBOX_*` variable shows up as a value in the help.
fn help_text() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("--help")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("outbox-relay --help runs");
    assert!(
        out.status.success(),
        "outbox-relay --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the help is UTF-8")
}

/// The keys the config file accepts, as the binary names them when it
/// meets one it does not know (serde's "expected one of `a`, `b`").
fn config_file_keys() -> Vec<String> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "not_a_setting = 1\n").expect("a config file");
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("--config")
        .arg(&path)
        .arg("migrate")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("outbox-relay runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let list = stderr
        .split_once("expected one of ")
        .map(|(_, rest)| rest.lines().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no list of accepted keys in: {stderr}"));
    list.split(", ")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .collect()
}

/// The text of every `[tag: …]` in `text`.
fn bracketed<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("[{tag}: ");
    text.match_indices(&open)
        .filter_map(|(at, m)| {
            let rest = &text[at + m.len()..];
            rest.find(']').map(|end| &rest[..end])
        })
        .collect()
}

/// Each long flag of the Options section of `--help`, with the default and
/// the environment variable its entry names.
fn parse_help(help: &str) -> Result<BTreeMap<String, Flag>, Vec<String>> {
    let options = help
        .split_once("\nOptions:\n")
        .map(|(_, rest)| rest)
        .expect("an Options: section in --help");
    // An entry starts on a line indented less than its description, with
    // `-x, --flag` or `--flag`; wrapped description lines are joined.
    let mut entries: Vec<String> = Vec::new();
    for line in options.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if indent < 8 && trimmed.starts_with('-') {
            entries.push(trimmed.to_owned());
        } else if let Some(entry) = entries.last_mut() {
            entry.push(' ');
            entry.push_str(trimmed);
        }
    }
    let mut flags = BTreeMap::new();
    let mut problems = Vec::new();
    for entry in entries {
        let entry = entry.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(name) = entry
            .split([' ', ','])
            .find(|token| token.starts_with("--"))
            .map(str::to_owned)
        else {
            continue;
        };
        if name == "--help" || name == "--version" {
            continue;
        }
        let defaults = bracketed(&entry, "default");
        if defaults.len() > 1 {
            problems.push(format!("{name}: --help gives {} defaults", defaults.len()));
        }
        let env = bracketed(&entry, "env")
            .first()
            .map(|e| e.split('=').next().unwrap_or(e).to_owned());
        let default = defaults.first().map(|d| d.trim_matches('"').to_owned());
        flags.insert(
            name,
            Flag {
                env,
                default,
                config_key: None,
            },
        );
    }
    if problems.is_empty() {
        Ok(flags)
    } else {
        Err(problems)
    }
}

/// The first `code span` of a table cell.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// The settings table of docs/relay.md: the table whose header starts with
/// `| option |`. A default written as one code span is a value; anything
/// else (`required`, `none`, a link) means the flag has no default value.
fn parse_docs(markdown: &str) -> BTreeMap<String, Flag> {
    let mut lines = markdown
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("| option |"));
    let header: Vec<String> = lines
        .next()
        .expect("docs/relay.md has a table whose header starts with `| option |`")
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("the settings table has no `{name}` column"))
    };
    let (option, env, key, default) = (
        column("option"),
        column("env"),
        column("config key"),
        column("default"),
    );
    let mut flags = BTreeMap::new();
    for line in lines
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('|'))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let flag = code(cells[option])
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or_else(|| panic!("no `--flag` in the option cell of: {line}"))
            .to_owned();
        let value = cells[default];
        let default = (value.starts_with('`') && value.ends_with('`') && value.len() > 1)
            .then(|| value.trim_matches('`').to_owned());
        flags.insert(
            flag,
            Flag {
                env: code(cells[env]).map(str::to_owned),
                default,
                config_key: code(cells[key]).map(str::to_owned),
            },
        );
    }
    flags
}

/// A default as the library's constants (and `RelayConfig::new`) give it.
#[derive(Debug)]
enum Expected {
    /// Written exactly so.
    Text(String),
    /// Any humantime spelling of this duration (`60s` and `1m` alike).
    Duration(Duration),
}

impl Expected {
    fn matches(&self, written: Option<&str>) -> bool {
        match (self, written) {
            (Expected::Text(t), Some(w)) => t == w,
            (Expected::Duration(d), Some(w)) => humantime::parse_duration(w).ok() == Some(*d),
            (_, None) => false,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Text(t) => write!(f, "{t:?}"),
            Expected::Duration(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

fn constants() -> BTreeMap<&'static str, Expected> {
    use outbox_relay::*;
    use Expected::{Duration as D, Text as T};
    let config = RelayConfig::new("postgres://localhost/db");
    BTreeMap::from([
        ("--brokers", T(DEFAULT_BROKERS.to_owned())),
        ("--batch-size", T(DEFAULT_BATCH_SIZE.to_string())),
        ("--in-flight", T(DEFAULT_IN_FLIGHT.to_string())),
        ("--poll-interval", D(DEFAULT_POLL_INTERVAL)),
        (
            "--wakeup",
            T(format!("{:?}", config.wakeup).to_ascii_lowercase()),
        ),
        ("--lease", D(DEFAULT_LEASE)),
        ("--max-attempts", T(DEFAULT_MAX_ATTEMPTS.to_string())),
        ("--max-resends", T(DEFAULT_MAX_RESENDS.to_string())),
        ("--backoff-base", D(DEFAULT_BASE_DELAY)),
        ("--backoff-max", D(DEFAULT_MAX_DELAY)),
        ("--sweep-schedule", T(DEFAULT_SWEEP_SCHEDULE.to_owned())),
        ("--retention", D(DEFAULT_RETENTION)),
        ("--inbox-retention", D(DEFAULT_INBOX_RETENTION)),
        ("--cleanup-batch", T(DEFAULT_CLEANUP_BATCH.to_string())),
        ("--http-listen", T(DEFAULT_HTTP_LISTEN.to_owned())),
        ("--migrate", T(config.migrate.to_string())),
        ("--connect-timeout", D(DEFAULT_CONNECT_TIMEOUT)),
        ("--stall-timeout", D(DEFAULT_STALL_TIMEOUT)),
    ])
}

#[test]
fn every_flag_default_is_documented_once_and_right() {
    let help = match parse_help(&help_text()) {
        Ok(flags) => flags,
        Err(problems) => panic!("{}", problems.join("\n")),
    };
    let docs_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/relay.md");
    let docs = parse_docs(&std::fs::read_to_string(docs_path).expect("docs/relay.md"));
    let constants = constants();
    let mut problems = Vec::new();

    for name in help.keys().filter(|f| !docs.contains_key(*f)) {
        problems.push(format!("{name}: in --help, missing from docs/relay.md"));
    }
    for name in docs.keys().filter(|f| !help.contains_key(*f)) {
        problems.push(format!(
            "{name}: in docs/relay.md, not a flag of outbox-relay"
        ));
    }
    for (name, h) in &help {
        let Some(d) = docs.get(name) else { continue };
        if h.default != d.default {
            problems.push(format!(
                "{name}: default {:?} in --help, {:?} in docs/relay.md",
                h.default, d.default
            ));
        }
        if h.env.is_some() && h.env != d.env {
            problems.push(format!(
                "{name}: env {:?} in --help, {:?} in docs/relay.md",
                h.env, d.env
            ));
        }
        if let Some(key) = &d.config_key {
            let expected = name.trim_start_matches("--").replace('-', "_");
            if *key != expected && !(name == "--kafka" && key == "[kafka]") {
                problems.push(format!(
                    "{name}: config key `{key}` in docs/relay.md, the file reads `{expected}`"
                ));
            }
        }
        if let Some(value) = constants.get(name.as_str()) {
            if !value.matches(h.default.as_deref()) {
                problems.push(format!(
                    "{name}: default {:?} in --help, {value} in outbox_relay's constants",
                    h.default
                ));
            }
            if !value.matches(d.default.as_deref()) {
                problems.push(format!(
                    "{name}: default {:?} in docs/relay.md, {value} in outbox_relay's constants",
                    d.default
                ));
            }
        }
    }
    // The config key column against what the file really accepts.
    let accepted = config_file_keys();
    let documented: Vec<String> = docs
        .values()
        .filter_map(|d| d.config_key.as_deref())
        .map(|k| k.trim_start_matches('[').trim_end_matches(']').to_owned())
        .collect();
    for key in accepted.iter().filter(|k| !documented.contains(k)) {
        problems.push(format!(
            "config key `{key}`: the file accepts it, docs/relay.md does not list it"
        ));
    }
    for key in documented.iter().filter(|k| !accepted.contains(k)) {
        problems.push(format!(
            "config key `{key}`: in docs/relay.md, the file rejects it"
        ));
    }
    for name in constants.keys().filter(|f| !help.contains_key(**f)) {
        problems.push(format!("{name}: has a constant but is not in --help"));
    }
    assert!(
        problems.is_empty(),
        "the relay's documented defaults disagree:\n{}",
        problems.join("\n")
    );
}
