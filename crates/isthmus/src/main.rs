//! `isthmus`: the one binary. It parses the command line, sets up logging and wires the crates
//! together (the composition root). It holds no sync, directory or protocol logic of its own.

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Isthmus: one identity on both sides of your on-premises directories and the cloud.
#[derive(Debug, Parser)]
#[command(name = "isthmus", version, about)]
struct Cli {
    /// Log filter (also `RUST_LOG`), e.g. `info` or `isthmus=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a self-contained demo sync into an embedded tenant (needs nothing but this repository).
    Quickstart,
    /// Check that a distinguished name parses, and print it normalised.
    CheckDn {
        /// The DN, e.g. `CN=Ann,OU=Sales,DC=corp,DC=example`.
        dn: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .context("bad --log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli.command {
        Command::Quickstart => quickstart(),
        Command::CheckDn { dn } => {
            let parsed = model::Dn::parse(&dn).with_context(|| format!("`{dn}` is not a distinguished name"))?;
            println!("{parsed}");
            Ok(())
        }
    }
}

fn quickstart() -> anyhow::Result<()> {
    println!("Isthmus quickstart");
    println!("The sync engine and the embedded tenant are not built yet (see the open issues).");
    println!("This command will run an end-to-end sync into an embedded SQLite tenant once they land.");
    Ok(())
}
