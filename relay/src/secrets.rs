//! Keeping secrets out of logs, errors and `/healthz`: the database URL's
//! password and librdkafka's password, key and token settings.

/// What a hidden value is shown as.
pub(crate) const MASK: &str = "***";

/// The database URL with its password, and any `password=` or
/// `sslpassword=` query parameter, replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = match userinfo(url) {
        Some((start, end)) => match url[start..end].find(':') {
            Some(colon) => format!("{}{MASK}{}", &url[..start + colon + 1], &url[end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_setting(k) => format!("{k}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

/// Where the user-info part (`user:password`) of a URL starts and ends:
/// the authority ends at the first `/`, `?` or `#`, and the user-info at
/// its last `@`, as URL parsers read it.
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')?;
    Some((start, start + at))
}

/// Whether the relay treats the value of this librdkafka setting (or URL
/// parameter) as a secret, never to be logged: passwords, private keys,
/// client secrets, tokens and the OAUTHBEARER configuration.
pub fn is_secret_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || key.ends_with("key.pem")
        || key == "ssl_key"
        || key.starts_with("sasl.oauthbearer.config")
        || key.starts_with("sasl.jaas")
}

/// `text` with `value` replaced by `***`.
pub(crate) fn redact_value(text: &str, value: &str) -> String {
    if value.is_empty() {
        text.to_owned()
    } else {
        text.replace(value, MASK)
    }
}

/// `value`, or `***` when `key` names a secret.
pub(crate) fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_setting(key) {
        MASK
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_url_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db?sslmode=require&password=x&sslpassword=y"),
            "postgres://u:***@h/db?sslmode=require&password=***&sslpassword=***"
        );
        // An `@` in the password, unencoded, still hides all of it.
        assert_eq!(redact_url("postgres://u:a@b@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn knows_librdkafka_secrets() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret_setting(key), "{key}");
            assert_eq!(shown(key, "x"), MASK);
        }
        for key in ["sasl.username", "ssl.ca.location", "compression.type"] {
            assert!(!is_secret_setting(key), "{key}");
        }
    }
}
