//! Where configuration comes from: defaults, then a TOML file, then
//! `TESSERA__SECTION__KEY` environment variables (later wins).
//!
//! The environment is read through [`Source`] so tests substitute a map and
//! never mutate the process environment.

use std::collections::BTreeMap;

/// A set of `TESSERA__…` variables.
pub trait Source {
    /// Every variable as (name, value).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSource;

impl Source for EnvSource {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Source for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Prefix of configuration variables.
pub const ENV_PREFIX: &str = "TESSERA__";

/// Writes every `TESSERA__A__B=value` of `source` into `table` at `a.b`.
/// Values that parse as TOML scalars (numbers, booleans) keep their type;
/// anything else is a string.
pub fn apply_env(table: &mut toml::Table, source: &dyn Source) {
    for (name, value) in source.vars() {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        set_path(table, &keys, scalar(&value));
    }
}

/// Sets `value` at `keys` inside `table`, creating tables on the way. A path
/// through a non-table value is left alone (the file's shape wins; parsing
/// then reports it).
fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

fn scalar(value: &str) -> toml::Value {
    if let Ok(b) = value.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let mut table: toml::Table =
            toml::from_str("listen = \"a\"\n[tokens]\nkeep_leading = 6\n").unwrap();
        let env: BTreeMap<String, String> = [
            ("TESSERA__LISTEN".to_owned(), "127.0.0.1:1".to_owned()),
            ("TESSERA__TOKENS__KEEP_LEADING".to_owned(), "8".to_owned()),
            (
                "TESSERA__TOKENS__DETERMINISTIC".to_owned(),
                "true".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ]
        .into();
        apply_env(&mut table, &env);
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:1"));
        assert_eq!(table["tokens"]["keep_leading"].as_integer(), Some(8));
        assert_eq!(table["tokens"]["deterministic"].as_bool(), Some(true));
        assert!(!table.contains_key("unrelated"));
    }
}
