//! The routing scenarios in `meshara-core/simulations/` run as tests: each must meet the targets
//! in its `[expect]` table. Scenarios of up to 1,000 nodes run here; larger ones run in
//! `ten_thousand_nodes` (run by scripts/test.sh) and as the documented 100,000-node benchmark.
#![allow(clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::path::{Path, PathBuf};

use meshara_core::routing::sim::{self, Scenario};

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("simulations/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let scenario =
                Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, scenario));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn run_all(filter: impl Fn(&Scenario) -> bool) -> usize {
    let mut ran = 0;
    let mut failures = Vec::new();
    for (path, scenario) in scenarios().into_iter().filter(|(_, s)| filter(s)) {
        let report = sim::run(&scenario);
        println!("{}\n{}\n", path.display(), report.to_text());
        for miss in report.check(&scenario.expect) {
            failures.push(format!("{}: {miss}", scenario.name));
        }
        ran += 1;
    }
    assert!(
        failures.is_empty(),
        "targets missed:\n{}",
        failures.join("\n")
    );
    ran
}

#[test]
fn thousand_node_scenarios_meet_their_targets() {
    let ran = run_all(|s| s.nodes <= 1000);
    assert!(ran >= 2, "scenarios found: {ran}");
}

/// Run by scripts/test.sh: `cargo test -p meshara-core
/// --test simulations -- --ignored` (about 2.5 minutes in a debug build).
#[test]
#[ignore = "10,000 nodes, about 2.5 minutes: scripts/test.sh runs it"]
fn ten_thousand_nodes() {
    let ran = run_all(|s| s.nodes > 1000 && s.nodes <= 10_000);
    assert!(ran >= 1);
}
