//! The message shape every scenario uses: about 200-byte JSON payloads
//! spread over 1,000 keys. The SQL bulk loader builds exactly the same
//! bytes as [`payload_into`].

use std::fmt::Write as _;

/// Distinct keys.
pub const KEYS: u64 = 1_000;
/// Payload size in bytes.
pub const PAYLOAD_BYTES: usize = 200;

/// The key of message `i`.
pub fn key(i: u64) -> String {
    format!("key-{}", i % KEYS)
}

/// All keys, indexed by `i % KEYS`.
pub fn keys() -> Vec<String> {
    (0..KEYS).map(key).collect()
}

/// Writes message `i`'s payload into `out`: a JSON object padded to
/// [`PAYLOAD_BYTES`].
pub fn payload_into(i: u64, out: &mut String) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"order":{i},"sku":"SKU-{}","qty":{},"note":""#,
        i % 97,
        1 + i % 5
    );
    while out.len() < PAYLOAD_BYTES - 2 {
        out.push('x');
    }
    out.push_str("\"}");
}

/// Message `i`'s payload.
pub fn payload(i: u64) -> String {
    let mut s = String::with_capacity(PAYLOAD_BYTES);
    payload_into(i, &mut s);
    s
}

/// The `INSERT … SELECT … generate_series` that bulk-loads messages
/// `$2 .. $2 + $3` for topic `$1` with the same keys and payloads as
/// [`key`] and [`payload`]. Ids are UUIDv7-shaped and ascending (time part
/// `$4` ms + i/1000), like the library's, so the id index grows at its
/// right edge as it does in production.
pub const BULK_INSERT: &str = r#"
INSERT INTO outbox.message (id, topic, msg_key, payload)
SELECT (lpad(to_hex($4::bigint + g / 1000), 12, '0') || '7'
        || lpad(to_hex(g % 4096), 3, '0') || '8'
        || substr(md5(g::text), 1, 15))::uuid,
       $1,
       convert_to('key-' || (g % 1000), 'UTF8'),
       convert_to(rpad('{"order":' || g || ',"sku":"SKU-' || (g % 97) || '","qty":'
                       || (1 + g % 5) || ',"note":"', 198, 'x') || '"}', 'UTF8')
FROM generate_series($2::bigint, $2::bigint + $3::bigint - 1) AS g
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_are_200_bytes() {
        for i in [0, 7, 999, 123_456_789] {
            let p = super::payload(i);
            assert_eq!(p.len(), super::PAYLOAD_BYTES, "{p}");
            assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok(), "{p}");
        }
    }
}
