//! `paddock logs [SERVICE] [-f] [-n N]`: the captured output of the workers, read
//! from the instance's log files (prefixed by time, service and worker).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{client, output};
use crate::config::Config;
use crate::exit;
use crate::instance::Paths;

pub fn run(config: &Config, service: Option<&str>, follow: bool, n: usize) -> i32 {
    let paths = Paths::of(config);
    let services: Vec<String> = match service {
        Some(s) => {
            if config.service(s).is_none() {
                output::error(&format!(
                    "no service named {s:?} in {} (services: {})",
                    config.path.display(),
                    config
                        .services
                        .iter()
                        .map(|s| s.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return exit::USAGE;
            }
            vec![s.to_string()]
        }
        None => config.services.iter().map(|s| s.name.to_string()).collect(),
    };
    let files: Vec<PathBuf> = services
        .iter()
        .map(|s| paths.logs.join(format!("{s}.log")))
        .collect();
    let running = client::running(&paths);

    let mut lines: Vec<String> = files.iter().flat_map(|f| last_lines(f, n)).collect();
    // Lines start with an RFC 3339 timestamp, so a stable sort merges services in time order.
    lines.sort_by(|a, b| a.get(..24).cmp(&b.get(..24)));
    for l in &lines[lines.len().saturating_sub(n)..] {
        println!("{l}");
    }
    if !running {
        output::error(&format!(
            "{} (the lines above are from its last run, in {})",
            client::not_running_message(config),
            paths.logs.display()
        ));
        return exit::NOT_RUNNING;
    }
    if !follow {
        return exit::OK;
    }
    let mut offsets: Vec<(PathBuf, u64)> = files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for (path, off) in offsets.iter_mut() {
            let len = std::fs::metadata(&*path).map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // rotated: the file was renamed and a new one started
            }
            if len > *off
                && let Ok(mut f) = File::open(&*path)
            {
                let _ = f.seek(SeekFrom::Start(*off));
                let mut buf = Vec::new();
                let _ = f.take(len - *off).read_to_end(&mut buf);
                // Print only whole lines; keep a partial one for later.
                if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                    print!("{}", String::from_utf8_lossy(&buf[..=end]));
                    *off += end as u64 + 1;
                }
            }
        }
        if !client::running(&paths) {
            eprintln!("paddock: instance {} stopped", config.instance.name);
            return exit::OK;
        }
    }
}

/// The last `n` lines of `path` (and of its first rotated file when needed).
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut text = read(path);
    if text.lines().count() < n {
        let older = read(&PathBuf::from(format!("{}.1", path.display())));
        text = older + &text;
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
