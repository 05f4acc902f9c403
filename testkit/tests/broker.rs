//! The tansu guard against the real binary ([`outbox_testkit::tansu_bin`]);
//! skipped, saying so, where tansu is not installed.

use std::time::Duration;

use outbox_testkit::{tansu_bin, wait_for_port, Broker, Error, Storage};

fn have_tansu() -> bool {
    let bin = tansu_bin();
    let found = bin.is_file();
    if !found {
        eprintln!("skipped: no tansu at {}", bin.display());
    }
    found
}

#[tokio::test]
async fn a_missing_binary_says_so() {
    let mut broker = Broker::builder().bin("/nonexistent/tansu").build().unwrap();
    let dir = broker.data_dir().to_owned();
    assert!(matches!(broker.start().await, Err(Error::TansuNotFound(_))));
    assert!(!broker.is_running());
    drop(broker);
    assert!(!dir.exists(), "the made-up data folder is deleted");
}

#[tokio::test]
async fn starts_creates_topics_restarts_and_stops() {
    if !have_tansu() {
        return;
    }
    let logs =
        std::env::temp_dir().join(format!("testkit-logs-{}", outbox_testkit::random_suffix()));
    let mut broker = Broker::builder()
        .storage(Storage::Sqlite)
        .log_dir(&logs)
        .log_stem("t-tansu")
        .start()
        .await
        .unwrap();
    assert!(broker.is_running());
    broker.create_topic("testkit-topic", 3).await.unwrap();
    let again = broker.create_topic("testkit-topic", 3).await;
    assert!(matches!(again, Err(Error::CreateTopic { .. })), "{again:?}");

    let addr = broker.addr();
    broker.stop();
    assert!(!broker.is_running());
    assert!(matches!(broker.check_alive(), Err(Error::NotRunning(_))));
    broker.restart().await.unwrap();
    assert_eq!(broker.addr(), addr, "same port after a restart");
    assert!(logs.join("t-tansu-1.log").is_file());
    assert_eq!(broker.log(), Some(logs.join("t-tansu-2.log")));
    assert!(matches!(
        broker.start().await,
        Err(Error::AlreadyRunning(_))
    ));

    let data = broker.data_dir().to_owned();
    drop(broker);
    assert!(!data.exists());
    assert!(wait_for_port(&addr, Duration::from_millis(200))
        .await
        .is_err());
    let _ = std::fs::remove_dir_all(logs);
}
