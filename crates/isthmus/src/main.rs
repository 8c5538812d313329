//! `isthmus`: the one binary. It parses the command line, sets up logging and wires the crates
//! together (the composition root). It holds no sync, directory or protocol logic of its own.

mod config;
mod init;
mod ops;
mod phs_cmd;
mod preview;
mod progress;
mod pta_agent;
mod quickstart;
mod sync;
mod tenant_admin;
mod tenant_cmd;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::with_store;

/// Isthmus: one identity on both sides of your on-premises directories and the cloud.
#[derive(Debug, Parser)]
#[command(name = "isthmus", version, about)]
struct Cli {
    /// Log filter (also `RUST_LOG`). By default warnings only on a terminal, where progress
    /// bars show how steps advance, and the runner's progress lines too elsewhere (services, CI).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a self-contained demo sync (generated forest → cloud directory) into a new SQLite database.
    Quickstart(quickstart::Args),
    /// Show the run history: every step with its counts.
    History {
        #[command(flatten)]
        store: ops::StoreArgs,
        /// Newest first, at most this many.
        #[arg(long, default_value_t = 30)]
        limit: usize,
    },
    /// Connector-space tools.
    Cs {
        #[command(subcommand)]
        command: CsCommand,
    },
    /// Metaverse tools.
    Mv {
        #[command(subcommand)]
        command: MvCommand,
    },
    /// Show values the cloud directory quarantined (duplicate UPNs and proxy addresses).
    Conflicts {
        #[command(flatten)]
        store: ops::StoreArgs,
        /// The cloud connector.
        #[arg(long, default_value = "tenant")]
        connector: String,
    },
    /// Show every pending export (what the next export would do), per connector.
    Plan {
        #[command(flatten)]
        store: ops::StoreArgs,
        /// Only this connector.
        #[arg(long)]
        connector: Option<String>,
    },
    /// Show what a sync would do to one connector-space object, without doing it.
    Preview(preview::Args),
    /// Check that a distinguished name parses, and print it normalised.
    CheckDn {
        /// The DN, e.g. `CN=Ann,OU=Sales,DC=corp,DC=example`.
        dn: String,
    },
    /// Check an AD forest and a tenant, then write an express configuration file.
    Init(init::InitArgs),
    /// Sync cycles of the directories a configuration file names.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Password hash sync: users' password hashes, transformed on-premises, to the tenant.
    Phs {
        #[command(subcommand)]
        command: PhsCommand,
    },
    /// The pass-through authentication agent (on-premises; outbound HTTPS to the tenant only).
    PtaAgent {
        #[command(subcommand)]
        command: PtaAgentCommand,
    },
    /// Pass-through authentication agents, as the tenant's administrator sees them.
    Pta {
        #[command(subcommand)]
        command: pta_agent::AdminCommand,
    },
    /// Health alerts the tenant raised (sync not reporting, imports or exports failed, the
    /// deletion threshold, competing servers, password sync silent), as its administrator sees them.
    Health(tenant_admin::HealthArgs),
    /// The cloud tenant (Graph-compatible API and sign-in) over HTTPS.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Check a configuration file and its rule files without connecting to anything.
    CheckConfig {
        /// The configuration file.
        #[arg(default_value = "isthmus.toml")]
        file: PathBuf,
    },
    /// Check a sync-rule file and list its rules.
    CheckRules {
        /// The TOML rule file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PhsCommand {
    /// One pass: every enabled, synced account's hash of the connectors with password_hash_sync.
    Run(phs_cmd::RunArgs),
}

#[derive(Debug, Subcommand)]
enum PtaAgentCommand {
    /// Register this agent with the tenant (an admin app's credentials); keeps its certificate.
    Register(pta_agent::RegisterArgs),
    /// Take sign-ins from the tenant and check them against the domain controllers until stopped.
    Run(pta_agent::RunArgs),
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Serve the tenant until Ctrl-C.
    Serve(tenant_cmd::ServeArgs),
    /// App registrations, through Graph as an administrator.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// The tenant's domains: add, verify, show, and the sign-in method of their synced users.
    Domain {
        #[command(subcommand)]
        command: tenant_admin::DomainCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Register an app: its secret (into a file), service principal and role grants; or a public client.
    Create(tenant_cmd::AppCreateArgs),
    /// List the app registrations with their kind and Graph roles.
    List(tenant_admin::AppListArgs),
    /// Delete an app registration (its secrets, grants and refresh tokens stop working).
    Delete(tenant_admin::AppDeleteArgs),
}

#[derive(Debug, Subcommand)]
enum SyncCommand {
    /// One sync cycle: import every connector, sync, export, confirming import.
    Run(sync::RunArgs),
    /// Cycles on schedule (and at once on on-premises changes, in near-real-time mode) until stopped.
    Serve(sync::ServeArgs),
    /// What a running `sync serve` is doing: the cycle, step and progress, the last cycle.
    Status(sync::StatusArgs),
    /// Ask a running `sync serve` for a cycle now.
    Start(sync::StartArgs),
    /// Turn a running `sync serve`'s scheduled cycles on or off.
    Scheduler(sync::SchedulerArgs),
}

#[derive(Debug, Subcommand)]
enum CsCommand {
    /// Search a connector space.
    Search {
        #[command(flatten)]
        store: ops::StoreArgs,
        #[command(flatten)]
        args: ops::SearchArgs,
    },
}

#[derive(Debug, Subcommand)]
enum MvCommand {
    /// Show one metaverse object with the lineage of every value and its connectors.
    Show {
        #[command(flatten)]
        store: ops::StoreArgs,
        /// The metaverse object id.
        id: i64,
    },
}

/// mimalloc instead of glibc's allocator: a sync allocates and frees many small values per
/// object (attribute values, decoded rows), where glibc's malloc and free were a fifth of the
/// process's time and its arenas kept growing (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The message and its causes, never a stack backtrace (anyhow captures one when
            // RUST_BACKTRACE is set): these are the operator's errors, not the program's.
            eprintln!("Error: {err}");
            let causes: Vec<String> = err.chain().skip(1).map(ToString::to_string).collect();
            if !causes.is_empty() {
                eprintln!("\nCaused by:");
                for cause in causes {
                    eprintln!("    {cause}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let default_filter = if ansi { "warn" } else { "warn,sync_runner=info" };
    let filter = match &cli.log {
        Some(filter) => tracing_subscriber::EnvFilter::try_new(filter),
        None => tracing_subscriber::EnvFilter::try_from_default_env().or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter)),
    }
    .context("bad --log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Quickstart(args) => quickstart::run(&args).await,
        Command::Init(args) => init::run(&args).await,
        Command::Sync { command: SyncCommand::Run(args) } => sync::run(&args).await,
        Command::Sync { command: SyncCommand::Serve(args) } => sync::serve(&args).await,
        Command::Sync { command: SyncCommand::Status(args) } => sync::status(&args).await,
        Command::Sync { command: SyncCommand::Start(args) } => sync::start(&args).await,
        Command::Sync { command: SyncCommand::Scheduler(args) } => sync::scheduler(&args).await,
        Command::CheckConfig { file } => sync::check(&file),
        Command::Tenant { command: TenantCommand::Serve(args) } => tenant_cmd::serve(&args).await,
        Command::Tenant { command: TenantCommand::App { command: AppCommand::Create(args) } } => tenant_cmd::app_create(&args).await,
        Command::Tenant { command: TenantCommand::App { command: AppCommand::List(args) } } => tenant_admin::app_list(&args).await,
        Command::Tenant { command: TenantCommand::App { command: AppCommand::Delete(args) } } => tenant_admin::app_delete(&args).await,
        Command::Tenant { command: TenantCommand::Domain { command } } => tenant_admin::domain(&command).await,
        Command::Phs { command: PhsCommand::Run(args) } => phs_cmd::run(&args).await,
        Command::PtaAgent { command: PtaAgentCommand::Register(args) } => pta_agent::register(&args).await,
        Command::PtaAgent { command: PtaAgentCommand::Run(args) } => pta_agent::run(&args).await,
        Command::Pta { command } => pta_agent::admin(&command).await,
        Command::Health(args) => tenant_admin::health(&args).await,
        Command::History { store, limit } => with_store!(store.open().await?, |opened| ops::history(&opened, limit, store.json).await),
        Command::Cs { command: CsCommand::Search { store, args } } => {
            with_store!(store.open().await?, |opened| ops::cs_search(&opened, &args, store.json).await)
        }
        Command::Mv { command: MvCommand::Show { store, id } } => {
            with_store!(store.open().await?, |opened| ops::mv_show(&opened, id, store.json).await)
        }
        Command::Conflicts { store, connector } => {
            with_store!(store.open().await?, |opened| ops::conflicts(&opened, &connector, store.json).await)
        }
        Command::Plan { store, connector } => {
            with_store!(store.open().await?, |opened| ops::plan(&opened, connector.as_deref(), store.json).await)
        }
        Command::Preview(args) => with_store!(args.store.open().await?, |opened| preview::run(opened, &args).await),
        Command::CheckDn { dn } => {
            let parsed = model::Dn::parse(&dn).with_context(|| format!("`{dn}` is not a distinguished name"))?;
            println!("{parsed}");
            Ok(())
        }
        Command::CheckRules { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            match sync_rules::RuleSet::parse(&text) {
                Ok(rules) => {
                    for rule in rules.rules() {
                        println!(
                            "{:>5}  {:?} {:<10} {} → {}  {}",
                            rule.precedence, rule.direction, rule.connector.0, rule.source_type, rule.target_type, rule.name
                        );
                    }
                    println!("{}: {} rules, all checked", file.display(), rules.rules().len());
                    Ok(())
                }
                Err(errors) => {
                    for error in &errors {
                        eprintln!("{}: {error}", file.display());
                    }
                    anyhow::bail!("{} problem(s) in {}", errors.len(), file.display())
                }
            }
        }
    }
}
