//! `cargo xtask`: project automation that is code, not shell: tidy checks and the directory generator.

mod bench_sync;
mod gen_directory;
mod tidy;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check crate layering, module docs and test attributes (also run by the test suite).
    Tidy,
    /// Generate a deterministic synthetic directory as LDIF, and optionally bulk-load a Samba template.
    GenDirectory(gen_directory::Args),
    /// Benchmark a full sync cycle of a generated forest through the runner, on SQLite or PostgreSQL.
    BenchSync(bench_sync::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tidy => {
            let problems = tidy::check_workspace()?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                for problem in &problems {
                    eprintln!("tidy: {problem}");
                }
                anyhow::bail!("{} tidy problem(s)", problems.len())
            }
        }
        Command::GenDirectory(args) => gen_directory::run(&args),
        Command::BenchSync(args) => bench_sync::run(&args),
    }
}
