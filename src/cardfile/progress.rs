//! Progress on stderr: a bar with rate and ETA redrawn in place on a
//! terminal, a plain line every few seconds otherwise (a log, a CI job).
//! Only counts are shown, never a row.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the bar is redrawn on a terminal.
const REDRAW: Duration = Duration::from_millis(100);
/// How often a plain line is written elsewhere.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// The bar's width in characters.
const WIDTH: usize = 30;

/// Progress through a file of `total` bytes.
#[derive(Debug)]
pub struct Progress {
    verb: &'static str,
    total: u64,
    started: Instant,
    /// Rows done before this run (a resumed run counts its own rate).
    rows_before: u64,
    /// Per mille of the file done before this run.
    permille_before: u64,
    last: Option<Instant>,
    terminal: bool,
}

/// `n` with thousands separators.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Progress {
    /// Progress of `verb` (`tokenized`, `detokenized`) through `total`
    /// bytes; an earlier run did `rows_before` rows, up to `position_before`.
    pub fn new(verb: &'static str, total: u64, rows_before: u64, position_before: u64) -> Self {
        Self {
            verb,
            total,
            started: Instant::now(),
            rows_before,
            permille_before: match total {
                0 => 0,
                total => position_before.min(total).saturating_mul(1000) / total,
            },
            last: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// The line for `position` bytes and `rows` rows done.
    pub fn line(&self, position: u64, rows: u64) -> String {
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let permille = match self.total {
            0 => 1000,
            total => position.min(total).saturating_mul(1000) / total,
        };
        let rate = rows.saturating_sub(self.rows_before).saturating_mul(1000) / elapsed_ms;
        // The share done in this run, for the time left.
        let run_permille = permille.saturating_sub(self.permille_before);
        let eta = if permille < 1000 && run_permille > 0 {
            clock(Duration::from_millis(
                elapsed_ms.saturating_mul(1000 - permille) / run_permille,
            ))
        } else {
            "-".to_owned()
        };
        let width = u64::try_from(WIDTH).unwrap_or(30);
        let filled = usize::try_from(permille * width / 1000).unwrap_or(WIDTH);
        format!(
            "[{}{}] {:>3}%  {} rows {}  {} rows/s  ETA {eta}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            permille / 10,
            thousands(rows),
            self.verb,
            thousands(rate),
        )
    }

    /// Shows progress when it is time to.
    pub fn update(&mut self, position: u64, rows: u64) {
        let now = Instant::now();
        let due = if self.terminal { REDRAW } else { LINE_EVERY };
        if self.last.is_some_and(|last| now.duration_since(last) < due) {
            return;
        }
        self.last = Some(now);
        self.show(position, rows);
    }

    fn show(&self, position: u64, rows: u64) {
        let line = self.line(position, rows);
        let mut stderr = std::io::stderr();
        let _ = if self.terminal {
            write!(stderr, "\r{line}")
        } else {
            writeln!(stderr, "{line}")
        };
    }

    /// The last update, and the end of the bar's line.
    pub fn finish(&mut self, position: u64, rows: u64) {
        self.show(position, rows);
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_share_count_rate_and_eta() {
        let progress = Progress::new("tokenized", 1000, 0, 0);
        let line = progress.line(250, 12_345);
        assert!(
            line.starts_with("[#######-----------------------]  25%  12,345 rows tokenized"),
            "{line}"
        );
        assert!(
            line.contains("rows/s") && line.contains("ETA 0:00:"),
            "{line}"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
