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
                Some((k, _)) if is_secret_key(k) => format!("{k}={MASK}"),
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

/// `text` with every occurrence of the URL's password (as written and
/// percent-decoded) replaced by `***`: for messages of libraries that
/// quote what they were given.
pub(crate) fn redact_text(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    for secret in url_secrets(url) {
        if secret.len() >= 3 {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

/// The password of a URL, as written and decoded, and any secret query
/// values.
fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((start, end)) = userinfo(url) {
        if let Some((_, password)) = url[start..end].split_once(':') {
            found.push(password.to_owned());
            if let Some(decoded) = percent_decode(password) {
                found.push(decoded);
            }
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if is_secret_key(k) {
                    found.push(v.to_owned());
                }
            }
        }
    }
    found
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the relay treats the value of this librdkafka setting (or URL
/// parameter) as a secret, never to be logged: passwords, private keys,
/// client secrets, tokens and the OAUTHBEARER configuration.
pub fn is_secret_setting(key: &str) -> bool {
    is_secret_key(key)
}

pub(crate) fn is_secret_key(key: &str) -> bool {
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
    if is_secret_key(key) {
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
    fn hides_passwords_quoted_in_text() {
        let url = "postgres://u:p%40ssw0rd@h/db?password=other-secret";
        let text = "bad value p@ssw0rd and p%40ssw0rd and other-secret";
        assert_eq!(redact_text(text, url), "bad value *** and *** and ***");
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
            assert!(is_secret_key(key), "{key}");
            assert_eq!(shown(key, "x"), MASK);
        }
        for key in ["sasl.username", "ssl.ca.location", "compression.type"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }
}
