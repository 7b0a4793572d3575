//! The command line: parsing, then one module per command. Thin on purpose: each
//! command validates the config first (exit 2 on any error), then does its one job.

mod check;
mod client;
mod daemonize;
mod doctor;
mod doctor_gpu;
mod doctor_sdk;
mod findings;
mod init;
mod jobs;
mod logs;
mod openapi;
mod output;
mod python_sdk;
mod reload;
mod run;
mod start;
mod status;
mod stop;
mod token;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "Run machine-learning models as reliable local services"
)]
struct Cli {
    /// The config file.
    #[arg(short, long, global = true, default_value = "paddock.toml")]
    config: PathBuf,
    /// Override the gateway's listen port (this selects another instance).
    #[arg(long, global = true)]
    port: Option<u16>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a paddock.toml and a worker.py that run as they are (never overwrites).
    Init {
        /// The folder (made if missing); the service is named after it.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// What the worker shows.
        #[arg(long, value_enum, default_value_t = init::Template::Basic)]
        template: init::Template,
        /// The model's Python interpreter (default: python3 on PATH).
        #[arg(long)]
        python: Option<String>,
        /// Print what was written, and the SDK found, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config; errors name the file, line and key.
    Check {
        /// Print the result as JSON (`ok`, the config's path, its services).
        #[arg(long)]
        json: bool,
    },
    /// Start the daemon in the background; exit 0 only when every service is ready.
    Start {
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground (systemd Type=notify, containers, Ctrl-C).
    Run,
    /// Stop the daemon gracefully and wait until it is gone.
    Stop {
        /// Print the outcome as JSON (`stopped`, `seconds`).
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker one at a time, with no failed request.
    Reload {
        /// Print what was replaced as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the instance, its services and workers.
    Status {
        /// Print the full status as JSON (the same as GET /status).
        #[arg(long)]
        json: bool,
    },
    /// Look for what can make a model hang, crash or crawl (OpenMP runtimes, threads
    /// against cores, forks, masking environment, the state folder); exit 1 on a hazard.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the gateway's OpenAPI 3.1 document (from the running instance, else from
    /// the config).
    Openapi,
    /// Durable jobs: list, show, cancel, retry.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCmd,
    },
    /// Print the token that opens the operator routes (/admin/...) and the
    /// dashboard's logs and actions: `auth_token`, or the one the daemon made.
    Token {
        /// Print it as JSON (`token`, where it comes from, the header to send).
        #[arg(long)]
        json: bool,
    },
    /// Show the captured output of the workers.
    Logs {
        /// Only this service.
        service: Option<String>,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to show first.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == crate::exec_listen::ARG) {
        return crate::exec_listen::run(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    // `init` writes the config: there is none to load yet.
    if let Cmd::Init {
        dir,
        template,
        python,
        json,
    } = &cli.command
    {
        return init::run(dir, *template, python.as_deref(), cli.port, *json);
    }
    let config = match config::load(&cli.config, cli.port) {
        Ok(c) => c,
        Err(e) => {
            output::error(&e.to_string());
            if let config::ConfigError::Read { .. } = e {
                eprintln!("hint: pass the config file with -c FILE (default: ./paddock.toml)");
            }
            return exit::USAGE;
        }
    };
    dispatch(cli.command, config)
}

fn dispatch(cmd: Cmd, config: Config) -> i32 {
    // Commands that only print end quietly when their reader goes away
    // (`paddock status --json | head`), as Unix tools do. Never for `start` and
    // `run`: the daemon must survive a client that hangs up on it.
    if !matches!(cmd, Cmd::Start { .. } | Cmd::Run) {
        paddock_sys::signal::die_on_broken_pipe();
    }
    match cmd {
        Cmd::Init { .. } => unreachable!("init runs before the config is loaded"),
        Cmd::Check { json } => check::run(&config, json),
        Cmd::Start { json } => start::run(config, json),
        Cmd::Run => run::run(config),
        Cmd::Stop { json } => stop::run(&config, json),
        Cmd::Status { json } => status::run(&config, json),
        Cmd::Reload { json } => reload::run(&config, json),
        Cmd::Doctor { json } => doctor::run(&config, json),
        Cmd::Openapi => openapi::run(&config),
        Cmd::Token { json } => token::run(&config, json),
        Cmd::Jobs { command } => jobs::run(&config, command),
        Cmd::Logs {
            service,
            follow,
            lines,
        } => logs::run(&config, service.as_deref(), follow, lines),
    }
}
