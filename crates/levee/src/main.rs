//! The `levee` command: `run`, `check`, `demo`, `chaos proxy`, `chaos run`.
//!
//! Exit codes: 0 success, 78 (EX_CONFIG) for an invalid config, 1 when
//! levee cannot start (a port in use, no runtime).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use levee::{App, ConfigSource};

const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "levee", version, about = "A resilient traffic gateway in one binary.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file. SIGHUP, a change to the file, or
    /// `POST /api/v1/reload` on the admin listener reloads it.
    Run {
        /// The config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Do not reload when the file changes.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file: print every problem with its path; exit 0
    /// when valid, 78 when not.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the reference topology with five built-in backends, no files needed.
    Demo,
    /// Fault injection tools.
    Chaos {
        #[command(subcommand)]
        command: ChaosCommand,
    },
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// A TCP fault proxy that serves Toxiproxy's HTTP API, so Toxiproxy's
    /// clients drive it unchanged (docs/chaos.md). Ctrl-C or SIGTERM ends it.
    Proxy {
        /// Where the API listens (Toxiproxy's port by default).
        #[arg(long, default_value = levee_chaos::DEFAULT_API)]
        api: std::net::SocketAddr,
        /// Seeds the toxicity draws, so that a run can be repeated.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run a chaos scenario: load, faults on a schedule, SLO verdicts
    /// (docs/chaos.md). Exit 0 when every SLO holds, 1 when one fails, 78
    /// for an invalid scenario.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Write report.json, junit.xml and report.html into this directory.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Run the demo target on free ports instead of the reference ones
        /// (8080, 9901, 9101-9103, 9201-9202), beside anything using those.
        #[arg(long)]
        ephemeral_ports: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A chaos run prints its own progress: the gateway's info lines would
    // bury it.
    let quiet = matches!(
        cli.command,
        Command::Chaos {
            command: ChaosCommand::Run { .. }
        }
    );
    init_logging(if quiet { "warn" } else { "info" });
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, no_watch } => run(config, !no_watch),
        Command::Demo => demo(),
        Command::Chaos {
            command: ChaosCommand::Proxy { api, seed },
        } => chaos_proxy(api, seed),
        Command::Chaos {
            command:
                ChaosCommand::Run {
                    scenario,
                    report,
                    ephemeral_ports,
                },
        } => chaos_run(&scenario, report, ephemeral_ports),
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Loads and validates the config, then reads the files it names
/// (certificates), so that `check` finds everything `run` would refuse.
fn load(path: &std::path::Path) -> Result<levee_config::Config, levee_config::ConfigErrors> {
    let config = levee_config::load(path)?;
    levee_proxy::tls::check(&config).map_err(|errors| {
        levee_config::ConfigErrors(
            errors
                .into_iter()
                .map(|e| levee_config::ConfigError::new(e.path, e.message))
                .collect(),
        )
    })?;
    Ok(config)
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_config_errors(path, &errors);
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn print_config_errors(path: &std::path::Path, errors: &levee_config::ConfigErrors) {
    let n = errors.len();
    eprintln!(
        "{}: {n} problem{}:",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for e in errors.iter() {
        eprintln!("  {e}");
    }
}

/// The runtime: one worker means one event loop on the main thread (no
/// cross-thread scheduling at all); more use tokio's work-stealing pool.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        b
    };
    builder.enable_all().thread_name("levee-worker").build()
}

fn run(path: PathBuf, watch: bool) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(errors) => {
            print_config_errors(&path, &errors);
            return ExitCode::from(EX_CONFIG);
        }
    };
    let rt = match runtime(config.runtime.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let source = ConfigSource::File { path, watch };
        match App::start(config, source, None).await {
            Ok(app) => {
                app.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("levee: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo() -> ExitCode {
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match levee::demo::Demo::start_with(levee::demo::Options::cli()).await {
            Ok(demo) => {
                println!("{}", demo.banner());
                demo.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("levee demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn chaos_proxy(api: std::net::SocketAddr, seed: Option<u64>) -> ExitCode {
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(api).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("levee chaos proxy: cannot listen on {api}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(api = %api, "chaos proxy: Toxiproxy API listening");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let options = levee_chaos::Options { seed };
        let serve = levee_chaos::serve(listener, options, shutdown.clone());
        tokio::pin!(serve);
        let served = tokio::select! {
            r = &mut serve => r,
            () = stop_signal() => {
                // Stops the API and every proxy, each within its deadline.
                shutdown.cancel();
                serve.await
            }
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("levee chaos proxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn chaos_run(path: &std::path::Path, report: Option<PathBuf>, ephemeral_ports: bool) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read the file: {e}", path.display());
            return ExitCode::from(EX_CONFIG);
        }
    };
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = levee::chaos::RunOptions {
        report,
        ports: if ephemeral_ports {
            levee::demo::Ports::Ephemeral
        } else {
            levee::demo::Ports::Reference
        },
    };
    let finished = rt.block_on(async move {
        let interrupted = tokio_util::sync::CancellationToken::new();
        let on_signal = interrupted.clone();
        // Ends the run early; it still closes everything it opened.
        let watcher = tokio::spawn(async move {
            stop_signal().await;
            on_signal.cancel();
        });
        let mut out = std::io::stdout();
        let finished = levee::chaos::run(&text, options, &mut out, interrupted).await;
        watcher.abort();
        finished
    });
    use levee::chaos::Finished;
    match finished {
        Finished::Passed => ExitCode::SUCCESS,
        Finished::Failed => ExitCode::FAILURE,
        Finished::Invalid(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: invalid scenario", path.display());
            ExitCode::from(EX_CONFIG)
        }
        Finished::Error(why) => {
            eprintln!("levee chaos run: {why}");
            ExitCode::FAILURE
        }
        Finished::Interrupted => ExitCode::from(130),
    }
}

/// SIGINT or SIGTERM (or signals that cannot be installed: then stop at
/// once rather than run unstoppable).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("levee chaos proxy: cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
