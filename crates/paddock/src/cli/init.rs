//! `paddock init [DIR] [--template basic|batch|stream|jobs] [--python PATH] [--json]`:
//! a `paddock.toml` and a `worker.py` that run as they are.
//!
//! Why: a new user's first minute. The files are small, commented, and point to the
//! next step; the worker's interpreter is the one on PATH (or `--python`) and is
//! asked at once whether it imports a paddock SDK this binary can serve, with the
//! install command when it does not.
//!
//! Invariants: nothing is overwritten (existing files are named, exit 2, and nothing
//! is written); the service is named after the folder; the config passes `check`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::output;
use super::python_sdk::{self, Probed};
use crate::config::values::Name;
use crate::exit;

/// What the new worker shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// One request, one answer.
    Basic,
    /// Requests batched into one model call.
    Batch,
    /// An answer streamed as it is made.
    Stream,
    /// Durable background jobs.
    Jobs,
}

impl Template {
    fn worker(self) -> &'static str {
        match self {
            Template::Basic => include_str!("../../templates/basic.py"),
            Template::Batch => include_str!("../../templates/batch.py"),
            Template::Stream => include_str!("../../templates/stream.py"),
            Template::Jobs => include_str!("../../templates/jobs.py"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Template::Basic => "basic",
            Template::Batch => "batch",
            Template::Stream => "stream",
            Template::Jobs => "jobs",
        }
    }

    /// The curl line that calls the new service.
    fn call(self, name: &str, port: u16) -> String {
        let json = "-H 'Content-Type: application/json'";
        match self {
            Template::Basic => format!(
                "curl -s localhost:{port}/v1/{name} {json} -d '{{\"text\": \"what a wonderful day\"}}'"
            ),
            Template::Batch => format!(
                "curl -s localhost:{port}/v1/{name} {json} -d '{{\"text\": \"a sentence to embed\"}}'"
            ),
            Template::Stream => format!(
                "curl -sN localhost:{port}/v1/{name} {json} -d '{{\"prompt\": \"one word at a time\"}}'"
            ),
            Template::Jobs => format!(
                "curl -s localhost:{port}/v1/jobs/{name} {json} -d '{{\"text\": \"a long document to ingest\"}}'"
            ),
        }
    }

    /// Service settings that differ from the basic template's.
    fn settings(self) -> (u32, &'static str, &'static str) {
        match self {
            Template::Basic => (2, "30s", ""),
            Template::Batch => (
                1,
                "30s",
                "# One worker fills its batches best; add workers when one is saturated.\n",
            ),
            Template::Stream => (2, "120s", ""),
            Template::Jobs => (
                2,
                "300s",
                "# Jobs may take every worker (the default, 0.5, keeps half for online requests).\njobs_share = 1.0\n# Failed attempts are retried; a job is dead after this many.\nmax_attempts = 3\n",
            ),
        }
    }
}

#[derive(Debug, Serialize)]
struct Made {
    dir: PathBuf,
    files: Vec<PathBuf>,
    service: String,
    template: Template,
    url: String,
    call: String,
    sdk: Probed,
}

/// Runs `init`; returns the exit code.
pub fn run(
    dir: &Path,
    template: Template,
    python: Option<&str>,
    port: Option<u16>,
    json: bool,
) -> i32 {
    let port = port.unwrap_or(8700);
    let config = dir.join("paddock.toml");
    let worker = dir.join("worker.py");
    let existing: Vec<String> = [&config, &worker]
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        output::error(&format!(
            "{} already exist{}: nothing was written (move {} away, or choose another folder: paddock init DIR)",
            existing.join(" and "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" },
        ));
        return exit::USAGE;
    }
    let python = match python {
        Some(p) => p.to_string(),
        None => match find_on_path("python3") {
            Some(p) => p.display().to_string(),
            None => {
                output::error(
                    "no python3 on PATH: pass the model's interpreter with --python PATH",
                );
                return exit::USAGE;
            }
        },
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        output::error(&format!("could not create {}: {e}", dir.display()));
        return exit::FAILURE;
    }
    let name = service_name(dir);
    let call = template.call(&name, port);
    let (workers, request_timeout, extra) = template.settings();
    let fill = |text: &str| {
        text.replace("{name}", &name)
            .replace("{port}", &port.to_string())
            .replace("{call}", &call)
            .replace("{template}", template.name())
            .replace("{python_bare}", &python)
            .replace("{python}", &toml::Value::from(python.as_str()).to_string())
            .replace("{distribution}", crate::DISTRIBUTION)
            .replace("{version}", crate::VERSION)
            .replace("{workers}", &workers.to_string())
            .replace("{request_timeout}", request_timeout)
            .replace("{extra}", extra)
    };
    for (path, text) in [
        (&config, fill(include_str!("../../templates/paddock.toml"))),
        (&worker, fill(template.worker())),
    ] {
        // create_new: a file that appeared since the check above is not overwritten.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            output::error(&format!("could not write {}: {e}", path.display()));
            return if e.kind() == std::io::ErrorKind::AlreadyExists {
                exit::USAGE
            } else {
                exit::FAILURE
            };
        }
    }
    let sdk = python_sdk::probe(&python, dir, &Default::default());
    let made = Made {
        dir: dir.to_path_buf(),
        files: vec![config, worker],
        service: name,
        template,
        url: format!("http://127.0.0.1:{port}"),
        call,
        sdk,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&made).unwrap_or_default()
        );
    } else {
        print_human(&made);
    }
    exit::OK
}

fn print_human(m: &Made) {
    let files: Vec<String> = m.files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "wrote {} (template {}, service \"{}\" on {})",
        files.join(" and "),
        m.template.name(),
        m.service,
        m.url
    );
    let sdk = &m.sdk;
    match (sdk.ok, sdk.fit) {
        (true, "same") => println!(
            "the worker runs {}, which imports paddock {} from {}",
            sdk.python,
            sdk.version.as_deref().unwrap_or("?"),
            sdk.path.as_deref().unwrap_or("?")
        ),
        (true, fit) => eprintln!(
            "note: the worker runs {}, which imports paddock {} ({fit} than this paddock, {}; it works): to match, {}",
            sdk.python,
            sdk.version.as_deref().unwrap_or("?"),
            crate::VERSION,
            sdk.install
        ),
        (false, _) => eprintln!(
            "{} {}: the worker cannot start until it can; install it with:\n  {}",
            output::red("warning:"),
            sdk.error
                .as_deref()
                .unwrap_or("the SDK could not be checked"),
            sdk.install
        ),
    }
    let cd = if m.dir == Path::new(".") || m.dir.as_os_str().is_empty() {
        String::new()
    } else {
        format!("cd {} && ", m.dir.display())
    };
    println!("next:");
    println!(
        "  {cd}paddock run      # serve it in the foreground (Ctrl-C stops it); or paddock start"
    );
    println!("  {}", m.call);
    if m.template == Template::Jobs {
        let port = m.url.rsplit(':').next().unwrap_or("8700");
        println!("  curl -s localhost:{port}/v1/jobs/<id>          # the job's state");
        println!("  curl -s localhost:{port}/v1/jobs/<id>/result   # its result, once done");
    }
}

/// The service's name: the folder's, made a valid name ("model" when nothing of it
/// is usable or it is a reserved route).
fn service_name(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base = abs
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = Name::sanitize(&base);
    match name.as_str() {
        "" | "jobs" | "admin" | "_" | "-" => "model".to_string(),
        n => n.to_string(),
    }
}

/// The first `program` on PATH, as an absolute path.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| std::path::absolute(&p).unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_named_after_its_folder() {
        assert_eq!(service_name(Path::new("/tmp/My Demo")), "my-demo");
        assert_eq!(service_name(Path::new("/srv/jobs")), "model");
        assert_eq!(service_name(Path::new("/srv/embedder-2")), "embedder-2");
    }
}
