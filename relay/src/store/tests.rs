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
