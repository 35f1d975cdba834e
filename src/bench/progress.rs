//! Progress lines on stderr for long commands (`bench`, `make-model`): on a terminal one line
//! redrawn in place (carriage return, at most every 100 ms), otherwise plain lines that a log
//! keeps (for byte counts one per tenth of the work), so CI logs and pipes get no `\r` noise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

/// One progress display on a writer (stderr unless a test gives another).
pub struct ProgressLine<W: Write> {
    out: W,
    /// Redraw one line in place (a terminal) rather than write a line per step.
    terminal: bool,
    /// Characters of the line drawn last on a terminal, while it is not ended.
    open: usize,
    last_draw: Option<Instant>,
    /// The last tenth of a byte count written as a plain line.
    last_tenth: Option<u64>,
}

impl ProgressLine<std::io::Stderr> {
    /// Progress on stderr, redrawn in place when stderr is a terminal.
    pub fn stderr() -> Self {
        let err = std::io::stderr();
        let terminal = err.is_terminal();
        Self::new(err, terminal)
    }
}

impl<W: Write> ProgressLine<W> {
    /// Progress on `out`; `terminal` redraws one line in place.
    pub fn new(out: W, terminal: bool) -> Self {
        Self {
            out,
            terminal,
            open: 0,
            last_draw: None,
            last_tenth: None,
        }
    }

    /// Shows `text` as the current state: redraws the line on a terminal, else writes a line.
    pub fn line(&mut self, text: &str) {
        if self.terminal {
            let pad = self.open.saturating_sub(text.chars().count());
            let _ = write!(self.out, "\r{text}{:pad$}", "");
            self.open = text.chars().count();
            self.last_draw = Some(Instant::now());
        } else {
            let _ = writeln!(self.out, "{text}");
        }
        let _ = self.out.flush();
    }

    /// `done` of `total` bytes of `what`: on a terminal at most every 100 ms, else a line each
    /// time a tenth is passed; always at the start and when `done == total`.
    pub fn bytes(&mut self, what: &str, done: u64, total: u64) {
        let finished = done >= total;
        let tenth = (done.min(total) * 10).checked_div(total).unwrap_or(10);
        let due = if self.terminal {
            finished || self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW)
        } else {
            self.last_tenth.is_none_or(|last| tenth > last)
        };
        if !due {
            return;
        }
        self.last_tenth = Some(tenth);
        let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
        self.line(&format!(
            "{what}: {} of {} ({percent}%)",
            human_bytes(done),
            human_bytes(total)
        ));
        if finished {
            self.finish();
        }
    }

    /// Ends a line being redrawn on a terminal (nothing otherwise), so later output starts on a
    /// fresh line.
    pub fn finish(&mut self) {
        if self.terminal && self.open > 0 {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
        }
        self.open = 0;
        self.last_draw = None;
        self.last_tenth = None;
    }

    /// The writer (tests read what was written).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Bytes in decimal units, as the rest of the crate's messages write sizes (`16.1 GB`).
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: ProgressLine<Vec<u8>>) -> String {
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn off_a_terminal_byte_counts_are_one_plain_line_per_tenth() {
        let mut p = ProgressLine::new(Vec::new(), false);
        for done in (0..=1000).step_by(7).chain([1000]) {
            p.bytes("writing", done, 1000);
        }
        let out = text(p);
        assert!(!out.contains('\r'), "{out:?}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 11, "{out}");
        assert_eq!(lines[0], "writing: 0.0 kB of 1.0 kB (0%)");
        assert_eq!(lines[10], "writing: 1.0 kB of 1.0 kB (100%)");
    }

    #[test]
    fn on_a_terminal_the_line_is_redrawn_throttled_and_ended() {
        let mut p = ProgressLine::new(Vec::new(), true);
        for done in 0..500 {
            p.bytes("writing", done * 4_000_000, 2_000_000_000);
        }
        p.bytes("writing", 2_000_000_000, 2_000_000_000);
        let out = text(p);
        let draws = out.matches('\r').count();
        assert!((2..50).contains(&draws), "throttled: {draws} draws");
        assert!(
            out.starts_with("\rwriting: 0.0 kB of 2.00 GB (0%)"),
            "{out:?}"
        );
        assert!(
            out.ends_with("\rwriting: 2.00 GB of 2.00 GB (100%)\n"),
            "{out:?}"
        );
        assert_eq!(out.matches('\n').count(), 1, "one line, ended once");
    }

    #[test]
    fn a_shorter_redraw_clears_the_longer_line_before_it() {
        let mut p = ProgressLine::new(Vec::new(), true);
        p.line("run 10: 1234.5 ms");
        p.line("run 11: 9 ms");
        p.finish();
        assert_eq!(text(p), "\rrun 10: 1234.5 ms\rrun 11: 9 ms     \n");
    }
}
