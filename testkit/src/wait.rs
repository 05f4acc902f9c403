use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::Error;

/// How often [`wait_for`] asks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Asks `check` every [`POLL_INTERVAL`] (50 ms) until it returns
/// `Some`, and returns that value.
///
/// Fails with [`Error::Timeout`] naming `what` once `timeout` has passed
/// (`check` always runs at least once), or with `check`'s own error as
/// soon as it returns one. The error type is the caller's, so an `anyhow`
/// closure works as well as one returning this crate's [`Error`].
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, E>
where
    E: From<Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                log: None,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// 16 random lowercase hex digits, for database, topic, group and folder
/// names that must not collide between tests or between concurrent runs.
pub fn random_suffix() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_some() {
        let mut calls = 0;
        let got: Result<u32, Error> = wait_for("three calls", Duration::from_secs(1), || {
            calls += 1;
            let n = calls;
            async move { Ok((n == 3).then_some(n)) }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_what() {
        let got: Result<(), Error> =
            wait_for("nothing", Duration::from_millis(120), || async { Ok(None) }).await;
        let e = got.unwrap_err().to_string();
        assert!(e.contains("waiting for nothing"), "{e}");
    }

    #[test]
    fn suffixes_are_hex_and_differ() {
        let (a, b) = (random_suffix(), random_suffix());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
