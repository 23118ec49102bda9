//! The README against the code: its CLI reference is clap's own list of
//! commands and their help, word for word.

#![allow(clippy::unwrap_used, clippy::expect_used)]

const README: &str = include_str!("../README.md");
const START: &str = "<!-- cli-reference:start -->\n";
const END: &str = "<!-- cli-reference:end -->";

#[test]
fn the_cli_reference_is_clap_s_help() {
    let expected = tessera::cli::reference_markdown();
    let start = README.find(START).expect("the README has a CLI reference") + START.len();
    let end = start + README[start..].find(END).expect("the reference ends");
    if README[start..end] != expected && std::env::var_os("TESSERA_UPDATE_README").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let updated = format!("{}{expected}{}", &README[..start], &README[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert!(
        README[start..end] == expected,
        "README.md's CLI reference is out of date: run \
         `TESSERA_UPDATE_README=1 cargo test --test readme`, or replace it with:\n{expected}"
    );
}

#[test]
fn every_command_has_help() {
    let reference = tessera::cli::reference_markdown();
    for line in reference.lines().skip(2) {
        assert!(!line.ends_with("|  |"), "a command without help: {line}");
    }
    assert!(reference.contains("| `tessera import` |"));
    assert!(reference.contains("| `tessera config check` |"));
}
