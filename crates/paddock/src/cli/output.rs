//! Terminal output: colour and live lines on a terminal, plain text when piped.

use std::io::IsTerminal;

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

fn paint(code: &str, s: &str, tty: bool) -> String {
    if tty && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn red(s: &str) -> String {
    paint("31;1", s, stderr_is_tty())
}

pub fn green(s: &str) -> String {
    paint("32;1", s, stdout_is_tty())
}

pub fn error(msg: &str) {
    eprintln!("{} {msg}", red("error:"));
}
