//! Reporting start-up to whoever is waiting: the `start` command's pipe (detached
//! daemon) or the terminal (`paddock run`).
//!
//! Invariant: exactly one verdict is sent; after it the pipe is closed, and the
//! waiting `start` exits with the verdict's code. If the daemon dies before sending
//! one, the pipe closes without it and `start` reports that — never success.

use std::fs::File;
use std::io::Write;

use crate::control::StartEvent;

pub enum Reporter {
    Pipe(Option<File>),
    Terminal,
}

impl Reporter {
    pub fn progress(&mut self, service: &str, message: &str) {
        match self {
            // `run`: the daemon's own log (on the same terminal) already says it.
            Reporter::Terminal => {}
            Reporter::Pipe(Some(f)) => {
                let ev = StartEvent::Progress {
                    service: service.into(),
                    message: message.into(),
                };
                let _ = writeln!(f, "{}", serde_json::to_string(&ev).unwrap_or_default());
            }
            Reporter::Pipe(None) => {}
        }
    }

    pub fn verdict(&mut self, code: i32, message: &str, detail: Option<String>) {
        match self {
            Reporter::Pipe(f) => {
                if let Some(mut f) = f.take() {
                    let ev = StartEvent::Verdict {
                        code,
                        message: message.into(),
                        detail,
                    };
                    let _ = writeln!(f, "{}", serde_json::to_string(&ev).unwrap_or_default());
                }
            }
            // `run`: the daemon's log already has the message (`start failed: …` or
            // `instance … ready`); only the worker's last lines are news.
            Reporter::Terminal => {
                if code != 0
                    && let Some(d) = detail
                {
                    eprintln!("{d}");
                }
            }
        }
    }
}

/// A worker's last lines under a failure message: "last N lines of NAME:" and the
/// lines, indented; None when there are none.
pub fn tail_block(name: &str, tail: &[String]) -> Option<String> {
    if tail.is_empty() {
        return None;
    }
    let lines: Vec<String> = tail.iter().map(|l| format!("  | {l}")).collect();
    Some(format!(
        "last {} lines of {name}:\n{}",
        tail.len(),
        lines.join("\n")
    ))
}

/// A failure message that quotes what the worker's last lines already show (a
/// setup() traceback, say) is cut to its first line and the quote's last line, so
/// that `start` shows the traceback once.
pub fn shorten_shown(message: &str, tail: &[String]) -> String {
    let mut lines = message.lines();
    let Some(first) = lines.next() else {
        return String::new();
    };
    let quoted: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    let shown = |l: &&str| tail.iter().any(|t| t.trim_end() == l.trim_end());
    match quoted.last() {
        Some(last) if quoted.iter().all(shown) => {
            format!("{} {}", first.trim_end(), last.trim())
        }
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::shorten_shown;

    #[test]
    fn a_traceback_the_tail_shows_is_not_repeated() {
        let msg = "setup() raised an exception:\nTraceback (most recent call last):\n  File \"w.py\"\nRuntimeError: no weights";
        let tail: Vec<String> = [
            "loading",
            "Traceback (most recent call last):",
            "  File \"w.py\"",
            "RuntimeError: no weights",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            shorten_shown(msg, &tail),
            "setup() raised an exception: RuntimeError: no weights"
        );
        // Not in the tail (the worker printed nothing): kept whole.
        assert_eq!(shorten_shown(msg, &tail[..1]), msg);
        assert_eq!(
            shorten_shown("exited with status 1", &tail),
            "exited with status 1"
        );
    }
}
