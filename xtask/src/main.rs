//! `cargo xtask`: project automation that is code, not shell: tidy checks and the directory generator.

mod bench_hybrid;
mod bench_import;
mod bench_phs;
mod bench_pta;
mod bench_sync;
mod bench_tenant;
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
    /// Start a Samba AD DC and keep it running until Ctrl-C, for tests to attach to.
    SambaDc {
        /// Realm of the forest.
        #[arg(long, default_value = "CORP.EXAMPLE.TEST")]
        realm: String,
    },
    /// Benchmark the AD connector's full import of a bulk-loaded Samba template against ldapsearch.
    BenchImport(bench_import::Args),
    /// Time the tenant: token endpoint, $batch user creates, password sign-ins (release build).
    BenchTenant(bench_tenant::Args),
    /// Benchmark a full sync cycle of a generated forest through the runner, on SQLite or PostgreSQL.
    BenchSync(bench_sync::Args),
    /// Time Samba AD → tenant with the release isthmus binary: the initial sync and near-real-time latency.
    BenchHybrid(bench_hybrid::Args),
    /// Time password hash sync: NT hashes read over MS-DRSR, and password change → cloud sign-in.
    BenchPhs(bench_phs::Args),
    /// Time pass-through authentication: sign-ins/s with one and three agents, latency over a bare bind.
    BenchPta(bench_pta::Args),
}

/// mimalloc instead of glibc's allocator: a sync allocates and frees many small values per
/// object (attribute values, decoded rows), where glibc's malloc and free were a fifth of the
/// process's time and its arenas kept growing (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::BenchImport(args) => bench_import::run(&args),
        Command::BenchTenant(args) => bench_tenant::run(&args),
        Command::BenchHybrid(args) => bench_hybrid::run(&args),
        Command::BenchPhs(args) => bench_phs::run(&args),
        Command::BenchPta(args) => bench_pta::run(&args),
        Command::SambaDc { realm } => samba_dc(&realm),
    }
}

fn samba_dc(realm: &str) -> anyhow::Result<()> {
    let domain = realm.split('.').next().unwrap_or("CORP");
    let dc = testkit::samba::SambaDc::start(&testkit::samba::SambaConfig::forest(realm, domain))?;
    println!("Samba AD DC for {realm} on {} (ldaps://{}), pid {:?}", dc.ip(), dc.ip(), dc.pid());
    println!("Administrator password: {}", dc.config().admin_password);
    println!("Run tests against it from another shell:");
    println!("  export {}={}", testkit::samba::ATTACH_ENV, dc.dir().display());
    println!("Ctrl-C stops it and deletes its folder.");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    drop(dc);
    Ok(())
}
