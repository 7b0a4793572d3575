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
            Reporter::Pipe(Some(f)) => {
                let ev = StartEvent::Progress {
                    service: service.into(),
                    message: message.into(),
                };
                let _ = writeln!(f, "{}", serde_json::to_string(&ev).unwrap_or_default());
            }
            Reporter::Pipe(None) => {}
            Reporter::Terminal => eprintln!("paddock: {service}: {message}"),
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
            Reporter::Terminal => {
                if code == 0 {
                    eprintln!("paddock: {message}");
                } else {
                    eprintln!("paddock: error: {message}");
                }
                if let Some(d) = detail {
                    eprintln!("{d}");
                }
            }
        }
    }
}
