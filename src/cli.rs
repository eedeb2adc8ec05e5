//! The `ipn-relay` command line (docs/configuration.md, docs/operations.md).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::admin_cli::{
    self, ClientError, Connection, DeliveriesCommand, DiscardArgs, EventsCommand, QuarantineCommand, ReplayArgs,
    StoreCommand,
};
use crate::config::{Config, LogFormat, StoreKind};
use crate::providers::{nova, nowpayments};
use crate::server;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;

#[derive(Parser)]
#[command(
    name = "ipn-relay",
    version,
    about = "Verifies, dedupes and durably relays NOWPayments IPNs and Nova webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "IPN_RELAY_CONFIG", default_value = "ipn-relay.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingress, delivery and the admin listener.
    Serve(ConfigArg),
    /// Validate the configuration and print a summary; exit 1 on error.
    CheckConfig(ConfigArg),
    /// List deliveries or show one (via the admin API of a running relay).
    Deliveries {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Show an event and its deliveries (via the admin API).
    Events {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// A payment's (or payout's…) timeline: its events in sequence order,
    /// with regressions and their deliveries' states (via the admin API).
    Subject {
        #[command(flatten)]
        conn: Connection,
        /// The configured source name, e.g. nowpayments.
        source: String,
        /// The subject kind: payment, payout, deposit, …
        kind: String,
        /// The provider's id, e.g. a payment_id.
        id: String,
    },
    /// The refused callbacks the relay kept: list, show, and reverify them
    /// once their cause is fixed (via the admin API).
    Quarantine {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Replay deliveries by id, or every one a filter selects (via the admin API).
    Replay {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: ReplayArgs,
    },
    /// Close deliveries nobody should send, by id or by filter, with a
    /// reason (via the admin API); a replay by id reopens them.
    Discard {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: DiscardArgs,
    },
    /// What the store of a running relay holds (via the admin API).
    Store {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print the signature a provider would send for a body (local testing).
    Sign {
        provider: SignProvider,
        /// The provider secret (IPN secret or API secret).
        #[arg(long)]
        secret: String,
        /// The body; standard input if omitted.
        file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SignProvider {
    /// HMAC-SHA512 over the sorted JSON form, for `x-nowpayments-sig`.
    Nowpayments,
    /// HMAC-SHA256 over the exact bytes, for `X-Signature`.
    Nova,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::http::Chain(e.as_ref()));
            // Operator commands tell a bad request, a wrong token and an
            // unknown id apart; everything else is 1.
            std::process::ExitCode::from(e.downcast_ref::<ClientError>().map_or(1, ClientError::exit_code))
        }
    }
}

/// Runs an operator command on a small runtime of its own.
fn operator<F: Future<Output = Result<(), ClientError>>>(f: impl FnOnce() -> F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Failed(format!("cannot start a runtime: {e}")))?;
    Ok(rt.block_on(f())?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig(c) => {
            let config = Config::load(&c.config)?;
            print!("{} is valid\n{}", c.config.display(), config.summary());
            Ok(())
        }
        Command::Sign { provider, secret, file } => {
            let body = match file {
                Some(path) => std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).context("cannot read standard input")?;
                    buf
                }
            };
            let sig = match provider {
                SignProvider::Nowpayments => nowpayments::sign(secret.as_bytes(), &body),
                SignProvider::Nova => nova::sign(secret.as_bytes(), &body),
            };
            println!("{sig}");
            Ok(())
        }
        Command::Deliveries { conn, command } => operator(|| admin_cli::deliveries(&conn, command)),
        Command::Events { conn, command } => operator(|| admin_cli::events(&conn, command)),
        Command::Subject { conn, source, kind, id } => operator(|| admin_cli::subject(&conn, &source, &kind, &id)),
        Command::Quarantine { conn, command } => operator(|| admin_cli::quarantine(&conn, command)),
        Command::Replay { conn, args } => operator(|| admin_cli::replay(&conn, args)),
        Command::Discard { conn, args } => operator(|| admin_cli::discard(&conn, args)),
        Command::Store { conn, command } => operator(|| admin_cli::store(&conn, command)),
        Command::Serve(c) => {
            let config = Config::load(&c.config)?;
            init_logging(config.log_format);
            let workers = config.server.workers(&config.store.kind);
            tracing::info!(workers, "starting");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()?
                .block_on(serve(config, c.config))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // The current span (event id, source, endpoint) rides along once.
        LogFormat::Json => builder.json().flatten_event(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // SIGHUP reloads the configuration; until the relay is up to do so, it
    // must not end the process (its default). Tokio keeps a handler once
    // installed, so the stream can go.
    drop(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?);
    for var in &config.defaulted_vars {
        tracing::warn!(
            variable = %var,
            "!!! DEVELOPMENT DEFAULT IN USE: ${{{var}}} is not set, so its built-in default from the config applies. Set it before taking real traffic."
        );
    }
    if config.server.trusted_proxies.iter().any(|net| net.prefix_len() == 0) {
        tracing::warn!(
            "server.trusted_proxies contains a catch-all network: any client can choose its address with X-Forwarded-For"
        );
    }
    let store: Arc<dyn Store> = match &config.store.kind {
        StoreKind::Embedded { path } => {
            let store = EmbeddedStore::open(path)
                .with_context(|| format!("cannot open the embedded store at {}", path.display()))?;
            tracing::info!(path = %path.display(), "embedded store open");
            Arc::new(store)
        }
        StoreKind::Redis { url, prefix, options } => {
            let store = RedisStore::connect_with(url.expose(), prefix, options)
                .await
                .with_context(|| format!("cannot connect to Redis at {url} (store.url)"))?;
            tracing::info!(prefix = %prefix, "redis store connected");
            Arc::new(store)
        }
    };
    // Built before listening: a relay that could never deliver must not
    // start taking callbacks.
    let sender = crate::delivery::Sender::new(&config).context("cannot build the HTTP client for deliveries")?;
    let ingress = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let admin = tokio::net::TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.admin_listen)", config.server.admin_listen))?;
    server::run_from(Arc::new(config), Some(path), store, sender, ingress, admin, crate::shutdown::signal()).await?;
    Ok(())
}
