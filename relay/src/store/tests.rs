//! Checks of the statement files themselves; the statements' behaviour is
//! tested against a real PostgreSQL in `database.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use outbox::schema::MessageStatus;

fn queries() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/store/queries");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("the queries folder")
        .map(|e| {
            let path = e.expect("an entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("a readable statement");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_statement_names_itself_on_its_first_line() {
    for (name, text) in queries() {
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(first, format!("-- outbox-relay: {name}"), "{name}.sql");
    }
}

#[test]
fn every_statement_file_is_used() {
    let sources: String = ["mod.rs", "leases.rs", "upkeep.rs"]
        .iter()
        .map(|f| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("src/store")
                .join(f);
            std::fs::read_to_string(path).expect("a source file")
        })
        .collect();
    for (name, _) in queries() {
        assert!(
            sources.contains(&format!("statement!(\"{name}\")")),
            "queries/{name}.sql is not used"
        );
    }
}

#[test]
fn statuses_in_statements_are_the_schema_statuses() {
    let known: BTreeSet<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (name, text) in queries() {
        // Every one-word lower-case literal in these statements is a
        // status ('pending', …); other literals have spaces or digits.
        let body: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for literal in body.split('\'').skip(1).step_by(2) {
            if literal.chars().all(|c| c.is_ascii_lowercase()) && !literal.is_empty() {
                assert!(
                    known.contains(literal),
                    "{name}.sql uses status '{literal}', which the schema does not know"
                );
                seen.insert(literal.to_owned());
            }
        }
    }
    // The check could not fail if it found no literal at all.
    assert!(
        seen.contains("pending") && seen.contains("dead"),
        "{seen:?}"
    );
}

#[test]
fn seq_runs_hold_every_seq_and_nothing_else() {
    use super::SeqRuns;
    let runs = SeqRuns::new(&[5, 3, 4, 9, 9, 10, 12]);
    assert_eq!(runs.first, vec![3, 9, 12]);
    assert_eq!(runs.last, vec![5, 10, 12]);
    assert_eq!(runs.messages(), 6, "duplicates count once");
    let expanded: Vec<i64> = runs
        .first
        .iter()
        .zip(&runs.last)
        .flat_map(|(&a, &b)| a..=b)
        .collect();
    assert_eq!(expanded, vec![3, 4, 5, 9, 10, 12]);
    assert_eq!(SeqRuns::new(&[]), SeqRuns::default());

    // Three messages a run on average or more: by range.
    assert!(SeqRuns::new(&(1..=1000).collect::<Vec<_>>()).worth_it());
    assert!(SeqRuns::new(&[1, 2, 3, 7, 8, 9]).worth_it());
    assert!(!SeqRuns::new(&[1, 2, 3, 7, 8]).worth_it());
    assert!(!SeqRuns::new(&[1, 3, 5, 7]).worth_it());
}
